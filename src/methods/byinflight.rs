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
//! A member found at its cap when the reservation is tried is passed over and the scan runs
//! again without it.
//!
//! Tests check the ordering rule, the weights, turn-taking and that full members are skipped.

use super::{Candidate, Choice, Method, Pick, Reason, Scored};
use std::cmp::Ordering;
use std::sync::atomic;

/// The method.
pub struct ByInflight;

impl Method for ByInflight {
    fn choose(&self, pick: &mut Pick<'_>) -> Option<Choice> {
        choose_and_reserve(pick)
    }

    /// `(inflight + 1) / loadfactor`.
    fn scores(&self, members: &[Scored]) -> Vec<Option<f64>> {
        members.iter().map(|m| Some((m.inflight + 1) as f64 / (f64::from(m.weight.max(1)) / 100.0))).collect()
    }
}

/// The least loaded candidate that has room, reserved; `None` when every one is full. Also
/// `byhash`'s choice for requests it cannot place by key.
pub fn choose_and_reserve(pick: &mut Pick<'_>) -> Option<Choice> {
    let start = pick.shared.turns.rotation.fetch_add(1, atomic::Ordering::Relaxed) as usize;
    for _ in 0..pick.candidates().len() {
        let position = choose(pick.candidates(), start)?;
        if pick.reserve(position) {
            let Candidate { inflight, weight, .. } = pick.candidates()[position];
            return Some(Choice { position, reason: Reason::LeastInflight { inflight, weight } });
        }
    }
    None
}

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
    let left = (u64::from(a.inflight) + 1) * u64::from(b.weight.max(1));
    let right = (u64::from(b.inflight) + 1) * u64::from(a.weight.max(1));
    left.cmp(&right)
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::config::BalancerSettings;
    use crate::methods::testing::{Counts, Local, balancer, candidates, pick_once};

    fn c(inflight: u32, weight: u32) -> Candidate {
        Candidate { inflight, weight, lbfactor: weight, ..candidates(&[weight])[0] }
    }

    #[test]
    fn equal_members_take_turns_through_the_shared_rotation() {
        let (segment, slot) = balancer(3);
        let (mut p1, mut p2) = (Local::default(), Local::default());
        let settings = BalancerSettings::default();
        let idle = candidates(&[100, 100, 100]);
        let picks: Vec<usize> = (0..6)
            .map(|i| {
                let local = if i % 2 == 0 { &mut p1 } else { &mut p2 };
                let mut reserve = Counts::default();
                pick_once(&ByInflight, &segment, slot, &settings, local, &idle, None, &mut reserve)
                    .unwrap()
                    .position
            })
            .collect();
        assert_eq!(picks, vec![0, 1, 2, 0, 1, 2]);
    }

    #[test]
    fn a_member_found_full_at_reservation_is_passed_over() {
        let (segment, slot) = balancer(2);
        let mut local = Local::default();
        let settings = BalancerSettings::default();
        let mut two = candidates(&[100, 100]);
        two[0].limit = 1;
        // Another process filled member 0 meanwhile: the counts say so, the candidate does not.
        let mut reserve = Counts(vec![1, 0]);
        let choice = pick_once(&ByInflight, &segment, slot, &settings, &mut local, &two, None, &mut reserve);
        assert_eq!(choice.unwrap().position, 1);
        two[1].limit = 0;
        assert_eq!(
            pick_once(&ByInflight, &segment, slot, &settings, &mut local, &two, None, &mut reserve),
            None
        );
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
        assert_eq!(compare(&c(u32::MAX, 10_000), &c(u32::MAX, 1)), Ordering::Less);
    }

    mod properties {
        use super::*;
        use proptest::prelude::*;

        proptest! {
            /// The choice is a member with room whose key no other member with room beats.
            #[test]
            fn the_least_loaded_member_with_room_wins(
                members in prop::collection::vec((0u32..50, 1u32..10_000, any::<bool>()), 1..30),
                start in any::<usize>(),
            ) {
                let all: Vec<Candidate> =
                    members.iter().map(|&(inflight, weight, full)| Candidate { full, ..c(inflight, weight) }).collect();
                match choose(&all, start) {
                    Some(p) => {
                        prop_assert!(!all[p].full);
                        prop_assert!(all.iter().filter(|o| !o.full).all(|o| compare(&all[p], o) != Ordering::Greater));
                    }
                    None => prop_assert!(all.iter().all(|o| o.full)),
                }
            }
        }
    }
}
