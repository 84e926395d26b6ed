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
//! prefork (all concurrency between processes) the shares drift. Here the cycle is computed
//! once per process from every member's loadfactor (a pure function, identical in every
//! process) and a single shared atomic ticket says which step of it the next request takes.
//!
//! A ticket that lands on a member that cannot take the request (not offered by httpd: in
//! error, drained, in another lbset tier; at its `LBMaxInflight` cap; or, on its slow-start
//! ramp, turned away for this ticket in proportion to how far the ramp still has to go) is
//! spent, and the pick takes the next ticket. Every full cycle of tickets so gives each member
//! that can take requests exactly its weight's share, whatever the number of processes and
//! threads, and the cycle never changes when members come and go: it is rebuilt only when a
//! loadfactor changes or a member is added. A pick costs one atomic increment per ticket. After
//! [`TRIES`] tickets that all land on members that cannot take the request (almost every
//! member down), a draw by weight over the candidates decides, so a pick never costs more than
//! that plus one pass over the candidates.
//!
//! Building the cycle is O(cycle length x distinct weights): members with equal weights move
//! as a group, round robin inside the group, so a thousand equal members cost as little as one.
//!
//! Tests check the sequence above, exact shares over a cycle from any ticket, members leaving
//! and coming back, members at their cap, ramps, and several processes sharing one ticket.

use super::{Choice, Method, Pick, Reason, mix};
use std::sync::atomic::Ordering;

/// Tickets a pick takes before it draws by weight instead.
pub const TRIES: u32 = 64;

/// The method.
pub struct ByWeight;

impl Method for ByWeight {
    fn choose(&self, pick: &mut Pick<'_>) -> Option<Choice> {
        let tables = pick.tables(false);
        let tier = pick.candidates().first()?.tier;
        let Some(cycle) = tables.as_deref().and_then(|tables| tables.cycle(tier)) else {
            // No tables built yet in this process (see `tables`): a draw by weight.
            let ticket = pick.shared.turns.ticket.fetch_add(1, Ordering::Relaxed);
            return Some(Choice { position: drawn(pick, ticket)?, reason: Reason::Drawn { ticket } });
        };
        let mut ticket = 0;
        for skipped in 0..TRIES {
            ticket = pick.shared.turns.ticket.fetch_add(1, Ordering::Relaxed);
            let (member, step) = cycle.pick(ticket)?;
            let Some(position) = pick.local.offered.position(member) else { continue };
            if takes(&pick.local.candidates[position], ticket) && pick.reserve(position) {
                let cycle = cycle.len();
                return Some(Choice { position, reason: Reason::Ticket { ticket, step, cycle, skipped } });
            }
        }
        let position = drawn(pick, ticket)?;
        Some(Choice { position, reason: Reason::Drawn { ticket } })
    }
}

/// Whether the candidate takes the request that holds `ticket`: not known to be full, and, on a
/// slow-start ramp at `weight / lbfactor` of its loadfactor, for that share of its tickets.
fn takes(candidate: &super::Candidate, ticket: u64) -> bool {
    !candidate.full
        && (candidate.weight >= candidate.lbfactor
            || mix(ticket) % u64::from(candidate.lbfactor.max(1)) < u64::from(candidate.weight))
}

/// After [`TRIES`] tickets: a candidate drawn by weight with `ticket`, or the next one after it
/// that has room. `None` when every candidate is full.
fn drawn(pick: &mut Pick<'_>, ticket: u64) -> Option<usize> {
    let candidates = pick.candidates();
    let weight = |i: usize| if candidates[i].full { 0 } else { u64::from(candidates[i].weight.max(1)) };
    let total: u64 = (0..candidates.len()).map(weight).sum();
    if total == 0 {
        return None;
    }
    let mut point = mix(ticket) % total;
    let mut start = 0;
    while point >= weight(start) {
        point -= weight(start);
        start += 1;
    }
    let count = candidates.len();
    (0..count)
        .map(|i| (start + i) % count)
        .find(|&position| !pick.candidates()[position].full && pick.reserve(position))
}

/// Longest cycle kept. Weights whose reduced sum exceeds it are scaled down proportionally, so
/// each member's share stays within 1/65536 of its exact value.
pub const MAX_CYCLE: u64 = 1 << 16;

/// One cycle of the smooth weighted round robin: which member each step picks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Schedule {
    steps: Vec<u32>,
}

impl Schedule {
    /// The cycle for these weights (member `i` has `weights[i]`; zero counts as one).
    pub fn build(weights: &[u32]) -> Schedule {
        Schedule { steps: smooth_cycle(&reduce(weights)) }
    }

    /// The cycle for these weights, whose steps name `positions[i]` for member `i`.
    pub fn build_over(weights: &[u32], positions: &[u32]) -> Schedule {
        let mut schedule = Schedule::build(weights);
        schedule.steps.iter_mut().for_each(|step| *step = positions[*step as usize]);
        schedule
    }

    /// Number of steps in one cycle (the sum of the reduced weights).
    pub fn len(&self) -> usize {
        self.steps.len()
    }

    /// The member that ticket `ticket` lands on, with its step within the cycle.
    pub fn pick(&self, ticket: u64) -> Option<(usize, usize)> {
        if self.steps.is_empty() {
            return None;
        }
        let step = (ticket % self.steps.len() as u64) as usize;
        Some((self.steps[step] as usize, step))
    }
}

/// Divides the weights by their greatest common divisor and, if their sum is still longer than
/// [`MAX_CYCLE`], scales them to [`MAX_CYCLE`] steps, each member's steps its exact share
/// rounded to a neighbouring whole step (largest remainders get the steps left over), never
/// below 1: a member's share of the cycle is then within one step, 1/65536, of its exact
/// share, but for members whose exact share is less than one step (they get one).
fn reduce(weights: &[u32]) -> Vec<u64> {
    let weights: Vec<u64> = weights.iter().map(|&w| u64::from(w.max(1))).collect();
    let divisor = weights.iter().copied().fold(0, gcd).max(1);
    let mut reduced: Vec<u64> = weights.iter().map(|w| w / divisor).collect();
    let total: u64 = reduced.iter().sum();
    if total > MAX_CYCLE {
        let (total, cycle) = (u128::from(total), u128::from(MAX_CYCLE));
        let exact: Vec<u128> = reduced.iter().map(|&w| u128::from(w) * cycle).collect();
        reduced = exact.iter().map(|&e| ((e / total) as u64).max(1)).collect();
        let given: u64 = reduced.iter().sum();
        let mut by_remainder: Vec<usize> = (0..exact.len()).filter(|&i| exact[i] / total >= 1).collect();
        by_remainder.sort_unstable_by_key(|&i| std::cmp::Reverse(exact[i] % total));
        for &i in by_remainder.iter().take(MAX_CYCLE.saturating_sub(given) as usize) {
            reduced[i] += 1;
        }
        let divisor = reduced.iter().copied().fold(0, gcd).max(1);
        reduced.iter_mut().for_each(|w| *w /= divisor);
    }
    reduced
}

fn gcd(a: u64, b: u64) -> u64 {
    if b == 0 { a } else { gcd(b, a % b) }
}

/// Members of one weight: they are picked round robin among themselves, in member order.
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
        // There is a group whenever `total` > 0; the `else` only keeps panics off the request path.
        let Some(chosen) = groups.iter_mut().max_by(|a, b| {
            let by_current = a.current(step, total.into()).cmp(&b.current(step, total.into()));
            // On equal `current` the member listed first wins, as in nginx and Apache.
            by_current.then(b.front().cmp(&a.front()))
        }) else {
            break;
        };
        steps.push(chosen.front());
        chosen.picks += 1;
    }
    steps
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::BalancerSettings;
    use crate::methods::Tier;
    use crate::methods::testing::{Counts, Local, balancer, candidates, pick_offered, pick_once};

    /// `picks` picks over `c`, alternating between `processes` processes' own states, all on
    /// one shared ticket; how many each candidate got.
    fn shares(c: &[super::super::Candidate], processes: usize, picks: usize) -> Vec<u64> {
        shares_offered(c, c, processes, picks)
    }

    /// As [`shares`], in a balancer of `members` of which only `offered` are offered.
    fn shares_offered(
        members: &[super::super::Candidate],
        c: &[super::super::Candidate],
        processes: usize,
        picks: usize,
    ) -> Vec<u64> {
        let (segment, slot) = balancer(members.len() as u32);
        let settings = BalancerSettings::default();
        let mut locals: Vec<Local> = (0..processes).map(|_| Local::default()).collect();
        let mut counts = vec![0; c.len()];
        for i in 0..picks {
            let local = &mut locals[i % processes];
            let mut reserve = Counts::default();
            let choice =
                pick_offered(&ByWeight, &segment, slot, &settings, local, members, c, None, &mut reserve);
            counts[choice.unwrap().position] += 1;
        }
        counts
    }

    #[test]
    fn processes_sharing_a_ticket_share_one_exact_cycle() {
        assert_eq!(shares(&candidates(&[100, 200, 300]), 3, 600), [100, 200, 300]);
    }

    #[test]
    fn members_that_cannot_take_requests_spend_their_tickets() {
        // The third member is not offered (the finder lists only what httpd offers): the other
        // two keep exactly 1:2, and the smooth order among them.
        let all = candidates(&[100, 200, 300]);
        assert_eq!(shares_offered(&all, &all[..2], 2, 300), [100, 200]);
        assert_eq!(shares_offered(&all, &[all[0], all[2]], 2, 400), [100, 300]);
        // At its cap, the same.
        let mut capped = all.clone();
        capped[2].full = true;
        assert_eq!(shares(&capped, 2, 300), [100, 200, 0]);
    }

    #[test]
    fn a_ramping_member_takes_its_ramped_share() {
        let mut c = candidates(&[100, 100]);
        c[1].weight = 25; // a quarter of the way up its ramp
        let got = shares(&c, 1, 10_000);
        let share = got[1] as f64 / 10_000.0;
        assert!((share - 0.2).abs() < 0.02, "{got:?}: 25 against 100 is a fifth");
    }

    #[test]
    fn almost_everything_down_is_still_cheap_and_weighted() {
        // 1000 members of distinct loadfactors, only two offered: most tickets land on members
        // that are down, and the draw by weight decides.
        let (segment, slot) = balancer(1000);
        let settings = BalancerSettings::default();
        let mut local = Local::default();
        let all = candidates(&(0..1000).map(|i| 100 + i).collect::<Vec<u32>>());
        let offered = [all[10], all[900]];
        let mut counts = [0u32; 2];
        for _ in 0..2000 {
            let mut reserve = Counts::default();
            let shared = segment.balancer(slot).unwrap();
            let mut pick = local.pick(shared, &settings, &segment, 0, None, &all, &offered, &mut reserve);
            counts[ByWeight.choose(&mut pick).unwrap().position] += 1;
        }
        let share = f64::from(counts[1]) / 2000.0;
        let want = 1000.0 / (110.0 + 1000.0);
        assert!((share - want).abs() < 0.05, "{counts:?}");
    }

    #[test]
    fn members_coming_and_going_never_rebuild_the_cycle() {
        // Every pick sees another set of usable members (failovers, errors, drains): the
        // cycle is built once; only a loadfactor change rebuilds it.
        let (segment, slot) = balancer(50);
        let settings = BalancerSettings::default();
        let mut local = Local::default();
        let all = candidates(&(0..50).map(|i| 100 + i * 7).collect::<Vec<u32>>());
        let mut reserve = Counts::default();
        for pick in 0..500usize {
            let offered: Vec<_> =
                all.iter().copied().filter(|c| !(c.worker_index as usize + pick).is_multiple_of(7)).collect();
            pick_offered(
                &ByWeight,
                &segment,
                slot,
                &settings,
                &mut local,
                &all,
                &offered,
                None,
                &mut reserve,
            )
            .unwrap();
        }
        let builds = |local: &Local| local.shelves.shelf(0).unwrap().version();
        assert_eq!(builds(&local), 1);
        let mut reweighted = all.clone();
        reweighted[3].lbfactor = 900;
        reweighted[3].weight = 900;
        pick_once(&ByWeight, &segment, slot, &settings, &mut local, &reweighted, None, &mut reserve).unwrap();
        assert_eq!(builds(&local), 2, "a loadfactor change rebuilds it");
        reweighted[4].tier.standby = true;
        pick_once(&ByWeight, &segment, slot, &settings, &mut local, &reweighted, None, &mut reserve).unwrap();
        assert_eq!(builds(&local), 3, "so does a change of tier");
    }

    #[test]
    fn a_ticket_never_lands_on_another_tier() {
        // Two primaries and eight hot standbys, then eight members of lbset 1: while the
        // primaries are up, every pick takes one ticket, and the shares are exactly 1:2.
        let (segment, slot) = balancer(18);
        let settings = BalancerSettings::default();
        let mut local = Local::default();
        let mut all = candidates(&[100, 200, 100, 100, 100, 100, 100, 100, 100, 100]);
        all.iter_mut().skip(2).for_each(|c| c.tier.standby = true);
        all.extend(candidates(&[100; 8]).into_iter().enumerate().map(|(i, c)| super::super::Candidate {
            worker_index: 10 + i as u32,
            tier: Tier { lbset: 1, standby: false },
            ..c
        }));
        let primaries = [all[0], all[1]];
        let mut counts = [0u32; 2];
        for _ in 0..300 {
            let mut reserve = Counts::default();
            let choice = pick_offered(
                &ByWeight,
                &segment,
                slot,
                &settings,
                &mut local,
                &all,
                &primaries,
                None,
                &mut reserve,
            )
            .unwrap();
            assert!(
                matches!(choice.reason, Reason::Ticket { skipped: 0, cycle: 3, .. }),
                "{:?}",
                choice.reason
            );
            counts[choice.position] += 1;
        }
        assert_eq!(counts, [100, 200]);
        assert_eq!(segment.balancer(slot).unwrap().turns.ticket.load(Ordering::Relaxed), 300);
    }

    #[test]
    fn with_no_tables_yet_a_pick_draws_by_weight() {
        use crate::methods::{Shelves, tables::Builder};
        let (segment, slot) = balancer(2);
        let settings = BalancerSettings::default();
        // A builder that never runs: the tables never come.
        fn never(_: Box<dyn FnOnce() + Send>) -> bool {
            true
        }
        let mut local = Local { shelves: Shelves::new(1, Builder::Thread(never)), ..Local::default() };
        let all = candidates(&[100, 300]);
        let mut counts = [0u32; 2];
        for _ in 0..4000 {
            let mut reserve = Counts::default();
            let choice = pick_offered(
                &ByWeight,
                &segment,
                slot,
                &settings,
                &mut local,
                &all,
                &all,
                None,
                &mut reserve,
            )
            .unwrap();
            assert!(matches!(choice.reason, Reason::Drawn { .. }));
            counts[choice.position] += 1;
        }
        assert!((f64::from(counts[1]) / 4000.0 - 0.75).abs() < 0.03, "{counts:?}");
    }

    #[test]
    fn nothing_free_nothing_picked() {
        let mut c = candidates(&[100, 200]);
        c.iter_mut().for_each(|c| c.full = true);
        let (segment, slot) = balancer(2);
        let mut reserve = Counts::default();
        let mut local = Local::default();
        let settings = BalancerSettings::default();
        assert_eq!(pick_once(&ByWeight, &segment, slot, &settings, &mut local, &c, None, &mut reserve), None);
    }

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
        let worst = weights
            .iter()
            .enumerate()
            .map(|(i, &w)| (counts[i] as f64 / schedule.len() as f64 - f64::from(w) / total).abs())
            .fold(0.0, f64::max);
        assert!(worst <= 1.0 / MAX_CYCLE as f64, "a member is {} steps off", worst * MAX_CYCLE as f64);
        // The same with one member holding half the weight, where rounding every other member
        // down would hand it hundreds of steps too many.
        let mut heavy: Vec<u32> = (0..1000).map(|i| 100 + i * 9).collect();
        heavy[0] = heavy.iter().sum();
        let schedule = Schedule::build(&heavy);
        let total: f64 = heavy.iter().map(|&w| f64::from(w)).sum();
        let got = (0..schedule.len() as u64).filter(|&t| schedule.pick(t).unwrap().0 == 0).count();
        let off = (got as f64 / schedule.len() as f64 - f64::from(heavy[0]) / total).abs();
        assert!(off <= 1.0 / MAX_CYCLE as f64, "{} steps off", off * MAX_CYCLE as f64);
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

    mod properties {
        use super::*;
        use proptest::prelude::*;

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(64))]

            /// From any ticket, one cycle gives every member exactly its reduced weight.
            #[test]
            fn every_cycle_is_exact_from_any_ticket(
                weights in prop::collection::vec(1u32..10_000, 1..40),
                start in any::<u64>(),
            ) {
                let schedule = Schedule::build(&weights);
                let reduced = reduce(&weights);
                let mut counts = vec![0u64; weights.len()];
                for t in 0..schedule.len() as u64 {
                    counts[schedule.pick(start.wrapping_add(t)).unwrap().0] += 1;
                }
                prop_assert_eq!(counts, reduced);
            }

            /// Whatever is offered or full, a pick never lands on a member that cannot take the
            /// request, and finds one whenever one can.
            #[test]
            fn a_pick_never_lands_on_a_member_that_cannot_take_it(
                weights in prop::collection::vec(1u32..2_000, 1..20),
                offered_mask in any::<u32>(),
                full_mask in any::<u32>(),
                ticket in any::<u64>(),
            ) {
                let (segment, slot) = balancer(weights.len() as u32);
                segment.balancer(slot).unwrap().turns.ticket.store(ticket, std::sync::atomic::Ordering::Relaxed);
                let all = candidates(&weights);
                let mut offered: Vec<_> = all.iter().copied().filter(|c| offered_mask >> c.worker_index & 1 == 1).collect();
                if offered.is_empty() {
                    offered.push(all[0]);
                }
                for c in &mut offered {
                    c.full = full_mask >> c.worker_index & 1 == 1;
                }
                let mut local = Local::default();
                let settings = BalancerSettings::default();
                let choice = pick_offered(&ByWeight, &segment, slot, &settings, &mut local, &all, &offered, None, &mut Counts::default());
                match choice {
                    Some(choice) => prop_assert!(!offered[choice.position].full),
                    None => prop_assert!(offered.iter().all(|c| c.full)),
                }
            }
        }
    }
}
