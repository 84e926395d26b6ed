//! `bylatency`: power of two distinct choices on a peak-EWMA latency cost (Finagle's
//! "P2C + peak EWMA", the method behind Linkerd's and Envoy's latency-aware balancing).
//!
//! Each member has a latency estimate shared by every process (kept in its member slot, updated
//! by [`record`] as each attempt ends): a sample above the estimate replaces it at once
//! (peak sensitivity: a member that turns slow is avoided from its first slow answer), a lower
//! one pulls it down as an exponentially weighted moving average over an uneven time series,
//! `w = exp(-dt / decay)`, `estimate = sample * (1 - w) + estimate * w`. While a member has
//! nothing in flight its estimate also decays toward zero with time, so an idle member (one
//! that was slow once, or was never tried) is tried again sooner or later: no member starves
//! for good, the failure of latency balancers that only learn from traffic they send.
//!
//! A pick draws two **distinct** candidates, each with probability proportional to its weight,
//! and keeps the one with the lower `latency * (inflight + 1) / weight`. A member without a
//! sample yet is given the average estimate of the others, neither zero (it would flood) nor
//! infinity (it would starve).
//!
//! A failed attempt counts as at least four times the current estimate, so that a member that
//! fails fast does not look fast.
//!
//! Tests check the EWMA rules (peak, decay over uneven gaps, idle decay), that the two draws
//! are never the same member, that draws follow the weights, and that the lower cost wins.

use super::{Candidate, Choice, Method, Pick, Reason, Scored, mix};
use crate::shm::MemberSlot;
use std::sync::atomic::Ordering;

/// The method.
pub struct ByLatency;

impl Method for ByLatency {
    fn choose(&self, pick: &mut Pick<'_>) -> Option<Choice> {
        let decay = pick.settings.latency_decay().as_micros() as u64;
        for _ in 0..pick.candidates().len() {
            let draw = pick.shared.turns.rotation.fetch_add(1, Ordering::Relaxed);
            let (a, b) = draw_two(pick.candidates(), (mix(2 * draw), mix(2 * draw + 1)))?;
            let latency = |i: usize| ranked_latency(pick, i, decay);
            let (latency_a, latency_b) = (latency(a), latency(b));
            let candidates = pick.candidates();
            let cost_of = |i: usize, l: f64| cost(l, candidates[i].inflight.into(), candidates[i].weight);
            let (position, other, chosen_latency, other_latency) =
                if cost_of(b, latency_b) < cost_of(a, latency_a) {
                    (b, a, latency_b, latency_a)
                } else {
                    (a, b, latency_a, latency_b)
                };
            let score_of = |i: usize, l: f64| score(l, candidates[i].inflight.into(), candidates[i].weight);
            let reason = Reason::Latency {
                score: score_of(position, chosen_latency),
                other_score: score_of(other, other_latency),
                latency_us: chosen_latency,
            };
            if pick.reserve(position) {
                return Some(Choice { position, reason });
            }
        }
        None
    }

    /// `latency_ms x (inflight + 1) / loadfactor`, members without samples on the average.
    fn scores(&self, members: &[Scored]) -> Vec<Option<f64>> {
        let estimates: Vec<Option<f64>> = members.iter().map(|m| m.latency_us).collect();
        let neutral = neutral_latency(&estimates);
        members.iter().map(|m| Some(score(m.latency_us.unwrap_or(neutral), m.inflight, m.weight))).collect()
    }
}

/// The latency candidate `position` is ranked on: its estimate, or for a member without one the
/// average of the others' (see [`neutral_latency`]).
fn ranked_latency(pick: &Pick<'_>, position: usize, decay_us: u64) -> f64 {
    let estimate_of = |c: &Candidate| {
        c.member
            .and_then(|m| pick.segment.member(m as usize))
            .and_then(|m| estimate(m, pick.now_us, decay_us))
    };
    match estimate_of(&pick.candidates()[position]) {
        Some(latency) => latency,
        None => {
            let mut sum = 0.0;
            let mut known = 0usize;
            for latency in pick.candidates().iter().filter_map(estimate_of) {
                sum += latency;
                known += 1;
            }
            if known == 0 { 1.0 } else { sum / known as f64 }
        }
    }
}

/// Takes one latency sample into the member's peak EWMA, as its attempt ends.
pub fn record(member: &MemberSlot, sample_us: f64, failed: bool, now_us: u64, decay_us: u64) {
    let sample_us = sample_us.max(1.0);
    let previous_at = member.latency_at_us.swap(now_us, Ordering::AcqRel);
    let elapsed = now_us.saturating_sub(previous_at);
    let _ = member.latency_bits.fetch_update(Ordering::AcqRel, Ordering::Acquire, |bits| {
        let current = (bits != 0).then(|| f64::from_bits(bits));
        let sample = if failed { sample_us.max(4.0 * current.unwrap_or(0.0)) } else { sample_us };
        Some(updated(current, sample, elapsed, decay_us).to_bits())
    });
    member.latency_samples.fetch_add(1, Ordering::Relaxed);
}

/// The member's estimate to rank it on at `now_us`; an idle member's fades with the time since
/// its last sample. `None` before the first sample.
pub fn estimate(member: &MemberSlot, now_us: u64, decay_us: u64) -> Option<f64> {
    let bits = member.latency_bits.load(Ordering::Acquire);
    if bits == 0 {
        return None;
    }
    let estimate = f64::from_bits(bits);
    if member.inflight() > 0 {
        return Some(estimate);
    }
    let idle = now_us.saturating_sub(member.latency_at_us.load(Ordering::Acquire));
    Some(faded(estimate, idle, decay_us))
}

/// The new estimate after a sample of `sample_us`, `elapsed_us` after the last update.
pub fn updated(estimate_us: Option<f64>, sample_us: f64, elapsed_us: u64, decay_us: u64) -> f64 {
    match estimate_us {
        None => sample_us,
        Some(current) if sample_us > current => sample_us,
        Some(current) => {
            let weight = keep_weight(elapsed_us, decay_us);
            sample_us * (1.0 - weight) + current * weight
        }
    }
}

/// The estimate of an idle member, `idle_us` after its last sample: it fades toward zero.
pub fn faded(estimate_us: f64, idle_us: u64, decay_us: u64) -> f64 {
    estimate_us * keep_weight(idle_us, decay_us)
}

/// How much of the old estimate survives `elapsed_us`: `exp(-elapsed / decay)`.
fn keep_weight(elapsed_us: u64, decay_us: u64) -> f64 {
    (-(elapsed_us as f64) / decay_us.max(1) as f64).exp()
}

/// The cost the pick compares: `latency * (inflight + 1) / weight`.
pub fn cost(latency_us: f64, inflight: u64, weight: u32) -> f64 {
    latency_us * (inflight + 1) as f64 / f64::from(weight.max(1))
}

/// [`cost`] in the unit the status page and the debug log show it, milliseconds x (inflight +
/// 1) / loadfactor: a weight is a loadfactor in hundredths.
pub fn score(latency_us: f64, inflight: u64, weight: u32) -> f64 {
    cost(latency_us, inflight, weight) / 10.0
}

/// What a member without a sample yet is ranked on: the average of the others' estimates
/// (1 µs if nobody has one: then in-flight and weight decide), neither zero (it would flood)
/// nor infinity (it would starve).
pub fn neutral_latency(estimates: &[Option<f64>]) -> f64 {
    let known: Vec<f64> = estimates.iter().filter_map(|&e| e).collect();
    if known.is_empty() { 1.0 } else { known.iter().sum::<f64>() / known.len() as f64 }
}

/// Two distinct non-full candidates drawn with probability proportional to weight, using the
/// two random numbers given. `None` if no candidate is free; one candidate twice if only one is.
pub fn draw_two(candidates: &[Candidate], random: (u64, u64)) -> Option<(usize, usize)> {
    let weight = |i: usize| if candidates[i].full { 0 } else { u64::from(candidates[i].weight.max(1)) };
    let total: u64 = (0..candidates.len()).map(weight).sum();
    let first = weighted(candidates.len(), total, random.0, weight)?;
    let without_first = |i: usize| if i == first { 0 } else { weight(i) };
    let second = weighted(candidates.len(), total - weight(first), random.1, without_first).unwrap_or(first);
    Some((first, second))
}

/// One of positions `0..count` drawn with probability `weight(i) / total` (`total` is the sum
/// of the weights); `None` when every weight is 0.
fn weighted(count: usize, total: u64, random: u64, weight: impl Fn(usize) -> u64) -> Option<usize> {
    if total == 0 {
        return None;
    }
    let mut point = random % total;
    for i in 0..count {
        if point < weight(i) {
            return Some(i);
        }
        point -= weight(i);
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    const DECAY: u64 = 10_000_000; // 10 s

    use crate::config::BalancerSettings;
    use crate::methods::LocalState;
    use crate::methods::testing::{Counts, balancer, candidates, pick_once};

    fn c(weight: u32, inflight: u32) -> Candidate {
        Candidate { inflight, ..candidates(&[weight])[0] }
    }

    #[test]
    fn a_higher_sample_replaces_the_estimate_at_once() {
        assert_eq!(updated(Some(5_000.0), 50_000.0, 1, DECAY), 50_000.0);
        assert_eq!(updated(None, 7_000.0, 0, DECAY), 7_000.0, "the first sample is the estimate");
    }

    #[test]
    fn a_lower_sample_pulls_it_down_by_the_time_since_the_last() {
        // Right after the last sample the old estimate dominates; after one decay time the
        // sample weighs 1 - 1/e; after a long gap it is nearly all that counts.
        let soon = updated(Some(50_000.0), 5_000.0, 1_000, DECAY);
        let later = updated(Some(50_000.0), 5_000.0, DECAY, DECAY);
        let much_later = updated(Some(50_000.0), 5_000.0, 100 * DECAY, DECAY);
        assert!(soon > 49_900.0, "{soon}");
        assert!(
            (later - (5_000.0 * (1.0 - (-1f64).exp()) + 50_000.0 * (-1f64).exp())).abs() < 1e-6,
            "{later}"
        );
        assert!((much_later - 5_000.0).abs() < 1e-6, "{much_later}");
    }

    #[test]
    fn fast_samples_bring_a_slow_estimate_down_with_time_not_with_their_number() {
        // A fast sample every 100 ms for three decay times: the slow past weighs e^-3.
        let mut estimate = 100_000.0;
        for _ in 0..300 {
            estimate = updated(Some(estimate), 5_000.0, 100_000, DECAY);
        }
        let expected = 100_000.0 * (-3f64).exp() + 5_000.0 * (1.0 - (-3f64).exp());
        assert!((estimate - expected).abs() < 1.0, "{estimate} vs {expected}");
        // The same three decay times in three samples land in the same place.
        let mut coarse = 100_000.0;
        for _ in 0..3 {
            coarse = updated(Some(coarse), 5_000.0, DECAY, DECAY);
        }
        assert!((coarse - expected).abs() < 1.0, "{coarse}");
    }

    #[test]
    fn an_idle_estimate_fades_so_the_member_is_tried_again() {
        let slow = 500_000.0;
        let fast = 5_000.0;
        assert!(faded(slow, 0, DECAY) == slow);
        // After about decay * ln(100) of idleness the slow member looks as cheap as a fast one.
        let idle = (DECAY as f64 * (slow / fast).ln()) as u64 + 1;
        assert!(faded(slow, idle, DECAY) <= fast);
    }

    #[test]
    fn members_without_samples_get_the_average_not_zero_or_infinity() {
        assert_eq!(neutral_latency(&[Some(10_000.0), None, Some(30_000.0)]), 20_000.0);
        assert_eq!(neutral_latency(&[None; 3]), 1.0);
    }

    #[test]
    fn the_estimate_lives_in_the_member_slot_and_fades_while_idle() {
        let (segment, _) = balancer(1);
        let member = segment.member(0).unwrap();
        assert_eq!(estimate(member, 0, DECAY), None);
        record(member, 40_000.0, false, 1_000_000, DECAY);
        assert_eq!(estimate(member, 1_000_000, DECAY), Some(40_000.0));
        assert!(estimate(member, 1_000_000 + DECAY, DECAY).unwrap() < 40_000.0 / 2.0, "idle: fades");
        member.begin_attempt(None);
        assert_eq!(estimate(member, 1_000_000 + DECAY, DECAY), Some(40_000.0), "busy: holds");
        member.end_attempt(false, None);
        // A fast failure does not make the member look fast.
        record(member, 10.0, true, 1_000_001, DECAY);
        assert!(estimate(member, 1_000_001, DECAY).unwrap() >= 160_000.0);
        unsafe { segment.unmap() };
    }

    #[test]
    fn the_lower_cost_of_two_wins() {
        // Two members, both always drawn: the faster (by its recorded estimate) wins.
        let (segment, slot) = balancer(2);
        let shared = segment.balancer(slot).unwrap();
        let mut two = candidates(&[100, 100]);
        for (i, latency) in [(0usize, 10_000.0), (1, 2_000.0)] {
            let index = segment.member_index(shared, i).unwrap();
            two[i].member = Some(index as u32);
            record(segment.member(index).unwrap(), latency, false, 1_000_000, DECAY);
        }
        let mut local = LocalState::default();
        let settings = BalancerSettings::default();
        for _ in 0..20 {
            let mut reserve = Counts::default();
            let choice =
                pick_once(&ByLatency, &segment, slot, &settings, &mut local, &two, None, &mut reserve);
            assert_eq!(choice.unwrap().position, 1);
        }
        unsafe { segment.unmap() };
    }

    #[test]
    fn the_two_choices_are_always_distinct() {
        let candidates = [c(100, 0), c(100, 0)];
        for n in 0..10_000 {
            let (a, b) = draw_two(&candidates, (mix(2 * n), mix(2 * n + 1))).unwrap();
            assert_ne!(a, b);
        }
        let mut one_free = [c(100, 0), c(100, 0), c(100, 0)];
        one_free[0].full = true;
        one_free[2].full = true;
        assert_eq!(draw_two(&one_free, (1, 2)), Some((1, 1)));
        one_free[1].full = true;
        assert_eq!(draw_two(&one_free, (1, 2)), None);
    }

    #[test]
    fn draws_follow_the_weights() {
        let candidates = [c(100, 0), c(300, 0)];
        let mut firsts = [0u32; 2];
        for n in 0..40_000 {
            firsts[draw_two(&candidates, (mix(n), mix(n + 1_000_000))).unwrap().0] += 1;
        }
        let share = f64::from(firsts[1]) / 40_000.0;
        assert!((share - 0.75).abs() < 0.01, "{share}");
    }
}
