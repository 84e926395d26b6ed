//! `bylatency`: power of two distinct choices on a peak-EWMA latency cost (Finagle's
//! "P2C + peak EWMA", the method behind Linkerd's and Envoy's latency-aware balancing).
//!
//! Each member has a latency estimate shared by every process (see
//! [`crate::shm::MemberSlot::record_latency`]): a sample above the estimate replaces it at once
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
//! Tests check the EWMA rules (peak, decay over uneven gaps, idle decay), that the two draws
//! are never the same member, that draws follow the weights, and that the lower cost wins.

use super::Candidate;

/// One member's shared estimate, as read at pick time.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Estimate {
    /// Latency in microseconds; `None` until the first sample.
    pub latency_us: Option<f64>,
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

/// Latencies to rank `candidates` on: each one's estimate, or for a member with none yet the
/// average of the others (1 µs if nobody has one: then in-flight and weight decide).
pub fn latencies(estimates: &[Estimate]) -> Vec<f64> {
    let known: Vec<f64> = estimates.iter().filter_map(|e| e.latency_us).collect();
    let neutral = if known.is_empty() { 1.0 } else { known.iter().sum::<f64>() / known.len() as f64 };
    estimates.iter().map(|e| e.latency_us.unwrap_or(neutral).max(f64::MIN_POSITIVE)).collect()
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

/// Picks between `a` and `b`: the lower cost wins, `a` on a tie.
pub fn better(candidates: &[Candidate], latencies: &[f64], a: usize, b: usize) -> usize {
    let cost_of = |i: usize| cost(latencies[i], candidates[i].inflight, candidates[i].weight);
    if cost_of(b) < cost_of(a) { b } else { a }
}

/// A well-mixed 64-bit number from a counter (splitmix64), so that every pick, in whatever
/// process, draws from one shared sequence without any per-thread state.
pub fn mix(counter: u64) -> u64 {
    let mut z = counter.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

#[cfg(test)]
mod tests {
    use super::*;

    const DECAY: u64 = 10_000_000; // 10 s

    fn c(weight: u32, inflight: u64) -> Candidate {
        Candidate { worker_index: 0, weight, inflight, full: false }
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
        let latencies = latencies(&[
            Estimate { latency_us: Some(10_000.0) },
            Estimate { latency_us: None },
            Estimate { latency_us: Some(30_000.0) },
        ]);
        assert_eq!(latencies, vec![10_000.0, 20_000.0, 30_000.0]);
        let none = super::latencies(&[Estimate { latency_us: None }; 3]);
        assert!(none.iter().all(|&l| l == 1.0));
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

    #[test]
    fn the_lower_cost_wins() {
        let candidates = [c(100, 0), c(100, 3), c(400, 3)];
        let latencies = [10_000.0, 5_000.0, 5_000.0];
        // 10000*1/100 = 100 vs 5000*4/100 = 200: the slower but idle member wins.
        assert_eq!(better(&candidates, &latencies, 0, 1), 0);
        // 5000*4/400 = 50 beats 100: weight counts.
        assert_eq!(better(&candidates, &latencies, 0, 2), 2);
        assert_eq!(better(&candidates, &latencies, 1, 1), 1);
    }
}
