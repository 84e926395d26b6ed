//! `byinflight`: weighted least in-flight, HAProxy's `leastconn` with weights.
//!
//! The member with the smallest `(inflight + 1) / weight` wins, where `inflight` is the exact
//! number of attempts under way to it across every httpd process (shared atomic counters, see
//! [`crate::shm`]) and `weight` its live loadfactor, reduced during slow start. The `+ 1`
//! makes weights count when every member is idle: with weights 1:3 and nothing in flight, the
//! heavier member is cheaper (1/3 < 1/1). Keys are compared by cross-multiplication, with no
//! floating point. Equal keys take turns: the scan starts at a shared, rotating position and
//! keeps the first best member it finds.
//!
//! Compared with Apache's `bybusyness`, which compares raw `busy` counts updated without atomics
//! and uses loadfactor only to break ties, this gives a member of weight 2 twice the
//! concurrency of a member of weight 1, and counts that cannot drift.
//!
//! Tests check the ordering rule, the weights, turn-taking and that full members are skipped.

use super::Candidate;
use std::cmp::Ordering;

/// The position of the candidate to pick, scanning from `start` (modulo the number of
/// candidates); `None` if all are full.
pub fn choose(candidates: &[Candidate], start: usize) -> Option<usize> {
    let start = start % candidates.len().max(1);
    let (before, after) = candidates.split_at(start);
    // From `start` to the end, then from the beginning; ties keep the first seen.
    let best = least(None, start, after);
    least(best, 0, before).map(|(position, _)| position)
}

/// The least loaded of `best` and the non-full candidates of `part` (which starts at position
/// `offset`), `best` on a tie.
fn least<'a>(
    mut best: Option<(usize, &'a Candidate)>,
    offset: usize,
    part: &'a [Candidate],
) -> Option<(usize, &'a Candidate)> {
    for (i, candidate) in part.iter().enumerate() {
        if !candidate.full && best.is_none_or(|(_, b)| compare(candidate, b) == Ordering::Less) {
            best = Some((offset + i, candidate));
        }
    }
    best
}

/// Orders two candidates by `(inflight + 1) / weight`, without division.
pub fn compare(a: &Candidate, b: &Candidate) -> Ordering {
    let left = u128::from(a.inflight + 1) * u128::from(b.weight.max(1));
    let right = u128::from(b.inflight + 1) * u128::from(a.weight.max(1));
    left.cmp(&right)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn c(inflight: u64, weight: u32) -> Candidate {
        Candidate { worker_index: 0, weight, inflight, full: false }
    }

    #[test]
    fn least_loaded_relative_to_weight_wins() {
        assert_eq!(choose(&[c(3, 100), c(1, 100), c(2, 100)], 0), Some(1));
        // 3 in flight at weight 3 weighs as much as 1 at weight 1.
        assert_eq!(compare(&c(2, 300), &c(0, 100)), Ordering::Equal);
        assert_eq!(choose(&[c(2, 300), c(1, 100)], 0), Some(0));
        // Idle members: the heavier one is cheaper thanks to the +1.
        assert_eq!(choose(&[c(0, 100), c(0, 300)], 0), Some(1));
    }

    #[test]
    fn equal_keys_take_turns() {
        let all_equal = [c(0, 100), c(0, 100), c(0, 100)];
        let picks: Vec<_> = (0..6).map(|start| choose(&all_equal, start).unwrap()).collect();
        assert_eq!(picks, vec![0, 1, 2, 0, 1, 2]);
    }

    #[test]
    fn full_members_are_skipped() {
        let mut members = [c(0, 100), c(5, 100)];
        members[0].full = true;
        assert_eq!(choose(&members, 0), Some(1));
        members[1].full = true;
        assert_eq!(choose(&members, 0), None);
    }

    #[test]
    fn in_flight_follows_the_weights_when_filling_up() {
        // Hand out 40 attempts that never finish: each member ends with weight/total of them.
        let mut members = [c(0, 100), c(0, 300)];
        for turn in 0..40 {
            let picked = choose(&members, turn).unwrap();
            members[picked].inflight += 1;
        }
        assert_eq!((members[0].inflight, members[1].inflight), (10, 30));
    }

    #[test]
    fn huge_counts_do_not_overflow() {
        assert_eq!(compare(&c(u64::MAX - 1, 10_000), &c(u64::MAX - 1, 1)), Ordering::Less);
    }
}
