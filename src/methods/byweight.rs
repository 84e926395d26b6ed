//! `byweight`: smooth weighted round robin, exact across every httpd process and thread.
//!
//! The rule is nginx's smooth weighted round robin (Apache's `byrequests` uses the same one):
//! every step each member's `current` grows by its weight, the member with the largest
//! `current` is picked (the first one on a tie) and loses the total weight. Weights 5:1:1 give
//!
//! ```text
//!     a a b a c a a | a a b a c a a | ...
//! ```
//!
//! Apache keeps `current` in shared memory but updates it under a per-process lock only, so under
//! prefork (all concurrency between processes) the shares drift. Here the sequence is computed
//! once per process from the weights (a pure function, identical in every process) and a single
//! shared atomic ticket says which step of it the next request takes. Every full cycle of
//! tickets gives each member exactly its weight's share, whatever the number of processes and
//! threads, and a pick costs one atomic increment.
//!
//! Building the cycle is O(cycle length x distinct weights): members with equal weights move
//! as a group, round robin inside the group, so a thousand equal members cost as little as one.
//!
//! Tests check the sequence above, exact shares over a cycle, and that cycles of different
//! candidate sets (members leaving and coming back, weights changing) stay exact.

/// Longest cycle kept. Weights whose reduced sum exceeds it are scaled down proportionally, so
/// each member's share stays within 1/65536 of its exact value.
pub const MAX_CYCLE: u64 = 1 << 16;

/// One cycle of the smooth weighted round robin: which candidate each step picks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Schedule {
    weights: Vec<u32>,
    steps: Vec<u32>,
}

impl Schedule {
    /// The cycle for these weights (candidate `i` has `weights[i]`; zero counts as one).
    pub fn build(weights: &[u32]) -> Schedule {
        let reduced = reduce(weights);
        let steps = smooth_cycle(&reduced);
        Schedule { weights: weights.to_vec(), steps }
    }

    /// The weights this cycle was built for.
    pub fn weights(&self) -> &[u32] {
        &self.weights
    }

    /// Number of steps in one cycle (the sum of the reduced weights).
    pub fn len(&self) -> usize {
        self.steps.len()
    }

    /// The candidate that ticket `ticket` gets, with its step within the cycle.
    pub fn pick(&self, ticket: u64) -> Option<(usize, usize)> {
        if self.steps.is_empty() {
            return None;
        }
        let step = (ticket % self.steps.len() as u64) as usize;
        Some((self.steps[step] as usize, step))
    }
}

/// Divides the weights by their greatest common divisor and, if their sum is still longer than
/// [`MAX_CYCLE`], scales them down proportionally (never below 1).
fn reduce(weights: &[u32]) -> Vec<u64> {
    let weights: Vec<u64> = weights.iter().map(|&w| u64::from(w.max(1))).collect();
    let divisor = weights.iter().copied().fold(0, gcd).max(1);
    let mut reduced: Vec<u64> = weights.iter().map(|w| w / divisor).collect();
    let total: u64 = reduced.iter().sum();
    if total > MAX_CYCLE {
        reduced = reduced
            .iter()
            .map(|&w| ((u128::from(w) * u128::from(MAX_CYCLE) / u128::from(total)) as u64).max(1))
            .collect();
        let divisor = reduced.iter().copied().fold(0, gcd).max(1);
        reduced.iter_mut().for_each(|w| *w /= divisor);
    }
    reduced
}

fn gcd(a: u64, b: u64) -> u64 {
    if b == 0 { a } else { gcd(b, a % b) }
}

/// Members of one weight: they are picked round robin among themselves, in candidate order.
struct Group {
    weight: i128,
    members: Vec<u32>,
    picks: u64,
}

impl Group {
    fn front(&self) -> u32 {
        self.members[(self.picks % self.members.len() as u64) as usize]
    }

    /// `current` of the group's front member before step `step` (1-based) is taken:
    /// `step * weight - total * picks_of_that_member`.
    fn current(&self, step: u64, total: i128) -> i128 {
        let picks_of_front = i128::from(self.picks / self.members.len() as u64);
        i128::from(step) * self.weight - total * picks_of_front
    }
}

fn smooth_cycle(weights: &[u64]) -> Vec<u32> {
    let total: u64 = weights.iter().sum();
    let mut groups: Vec<Group> = Vec::new();
    for (candidate, &weight) in weights.iter().enumerate() {
        let weight = i128::from(weight);
        match groups.iter_mut().find(|g| g.weight == weight) {
            Some(group) => group.members.push(candidate as u32),
            None => groups.push(Group { weight, members: vec![candidate as u32], picks: 0 }),
        }
    }
    let mut steps = Vec::with_capacity(total as usize);
    for step in 1..=total {
        let chosen = groups
            .iter_mut()
            .max_by(|a, b| {
                let by_current = a.current(step, total.into()).cmp(&b.current(step, total.into()));
                // On equal `current` the member listed first wins, as in nginx and Apache.
                by_current.then(b.front().cmp(&a.front()))
            })
            .expect("weights is not empty when total > 0");
        steps.push(chosen.front());
        chosen.picks += 1;
    }
    steps
}

#[cfg(test)]
mod tests {
    use super::*;

    fn letters(weights: &[u32], n: usize) -> String {
        let schedule = Schedule::build(weights);
        (0..n as u64).map(|t| (b'a' + schedule.pick(t).unwrap().0 as u8) as char).collect()
    }

    /// Straight nginx/Apache smooth weighted round robin, step by step, to compare against.
    fn reference(weights: &[u32], n: usize) -> String {
        let total: i64 = weights.iter().map(|&w| i64::from(w)).sum();
        let mut current = vec![0i64; weights.len()];
        let mut out = String::new();
        for _ in 0..n {
            let mut best = 0;
            for i in 0..weights.len() {
                current[i] += i64::from(weights[i]);
                if current[i] > current[best] {
                    best = i;
                }
            }
            current[best] -= total;
            out.push((b'a' + best as u8) as char);
        }
        out
    }

    #[test]
    fn five_one_one_is_smooth() {
        assert_eq!(letters(&[5, 1, 1], 14), "aabacaaaabacaa");
    }

    #[test]
    fn matches_the_reference_rule() {
        let cases: &[&[u32]] = &[
            &[1, 2, 3],
            &[3, 2, 1],
            &[1, 1, 1, 1],
            &[5, 1, 1],
            &[7, 3, 3, 1, 7, 2],
            &[100, 100, 250, 300, 1],
            &[2, 2, 2, 4, 4, 9, 1, 1],
            &[13],
        ];
        for weights in cases {
            let total: u32 = weights.iter().sum();
            let n = total as usize * 3;
            // Apache's lbfactor is loadfactor x 100: scaling every weight must not matter.
            let scaled: Vec<u32> = weights.iter().map(|w| w * 100).collect();
            assert_eq!(letters(weights, n), reference(weights, n), "{weights:?}");
            assert_eq!(letters(&scaled, n), reference(weights, n), "{scaled:?}");
        }
    }

    #[test]
    fn every_cycle_gives_exact_shares_from_any_starting_ticket() {
        let weights = [100, 200, 300];
        let schedule = Schedule::build(&weights);
        assert_eq!(schedule.len(), 6);
        for start in [0u64, 1, 5, 1_000_003, u64::MAX - 6] {
            let mut counts = [0u32; 3];
            for t in start..start + 6 {
                counts[schedule.pick(t).unwrap().0] += 1;
            }
            assert_eq!(counts, [1, 2, 3], "cycle starting at ticket {start}");
        }
    }

    #[test]
    fn members_leaving_and_returning_keep_exact_shares() {
        // a, b, c = 1:2:3; b goes away (the finder then offers only a and c), then comes back.
        let all = Schedule::build(&[1, 2, 3]);
        let without_b = Schedule::build(&[1, 3]);
        assert_eq!(without_b.len(), 4);
        let mut counts = [0u32; 2];
        for t in 0..400 {
            counts[without_b.pick(t).unwrap().0] += 1;
        }
        assert_eq!(counts, [100, 300]);
        let mut counts = [0u32; 3];
        for t in 400..1000 {
            counts[all.pick(t).unwrap().0] += 1;
        }
        assert_eq!(counts, [100, 200, 300]);
    }

    #[test]
    fn weight_changes_rebuild_to_the_new_shares() {
        let before = Schedule::build(&[100, 100]);
        let after = Schedule::build(&[100, 400]);
        assert_ne!(before, after);
        let mut counts = [0u32; 2];
        for t in 0..500 {
            counts[after.pick(t).unwrap().0] += 1;
        }
        assert_eq!(counts, [100, 400]);
    }

    #[test]
    fn huge_weight_sums_are_scaled_to_the_cycle_cap() {
        // 1024 members with distinct weights: the exact cycle would be ~5 million long.
        let weights: Vec<u32> = (0..1024).map(|i| 100 + i * 7).collect();
        let schedule = Schedule::build(&weights);
        assert!(schedule.len() as u64 <= MAX_CYCLE + weights.len() as u64);
        let total: f64 = weights.iter().map(|&w| f64::from(w)).sum();
        let mut counts = vec![0u64; weights.len()];
        for t in 0..schedule.len() as u64 {
            counts[schedule.pick(t).unwrap().0] += 1;
        }
        for (i, &w) in weights.iter().enumerate() {
            let ideal = f64::from(w) / total;
            let got = counts[i] as f64 / schedule.len() as f64;
            assert!((got - ideal).abs() < 2.0 / MAX_CYCLE as f64, "member {i}: {got} vs {ideal}");
        }
    }

    #[test]
    fn many_equal_members_are_plain_round_robin() {
        let schedule = Schedule::build(&[100; 1000]);
        assert_eq!(schedule.len(), 1000);
        assert!((0..1000).all(|t| schedule.pick(t).unwrap().0 == t as usize));
    }

    #[test]
    fn no_candidates_no_pick() {
        assert_eq!(Schedule::build(&[]).pick(3), None);
    }
}
