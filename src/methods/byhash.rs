//! `byhash`: consistent hashing with bounded load, on a key taken from each request.
//!
//! **The table is Maglev's** (Eisenbud et al., NSDI 2016), in the weighted form Envoy uses: a
//! prime number `M` of slots (at least 65537, and over 100 per member), each member filling the
//! slots of its own pseudo-random permutation in turns, a member of half the weight taking a
//! turn half as often. A key goes to `table[hash(key) mod M]`. Why Maglev rather than a ring
//! (ketama): a lookup is one division and one array read instead of a binary search; the shares
//! come out within a fraction of a percent of the weights, where a ring needs hundreds of
//! points per member to get within several percent; and the table is a pure function of the
//! member names, weights and configuration order (the order only decides which member wins a
//! slot two of them reach in the same turn), so every httpd process builds the same one.
//!
//! **The table holds every configured member**, usable or not, and is rebuilt only when the
//! members or their loadfactors change. A key whose member cannot take it (unusable, not in
//! the current lbset tier, at its cap, still ramping up, or over the load bound) walks on to
//! the next member along the table, the same walk every time for the same key. So a member
//! going down moves exactly its own keys, spread over the others, and when it returns they all
//! come back.
//!
//! **Bounded load** (Mirrokni, Thorup, Zadimoghaddam, SODA 2018; HAProxy's
//! `hash-balance-factor`), made to tell a hot key from chance: a member is passed by while its
//! in-flight count exceeds `ceil(c * average + 3 * sqrt(average))`, `average` being the
//! attempts in flight over the usable members and `c` 1.25 by default; the check and the count
//! are one atomic step. Keys spread at random make a member's count wander around the average
//! by about its square root: at 16 clients over 5 members, the paper's `ceil(c * average)`
//! alone (5 with one in flight more than the average) is reached by chance on about one request
//! in five, and each time a key leaves its member, which is what hashing is chosen to avoid.
//! Three standard deviations of that wandering are reached by chance about once in a thousand;
//! a hot key reaches them at once and overflows to the next members of its walk instead of
//! burying its home member. At high concurrency the margin shrinks next to `c * average` (at an
//! average of 100 in flight it adds 30%).
//!
//! A request without a key (`LBHashKey` unset or empty for it), or whose key no member can take
//! (all at their caps, or all turning it away on their ramps), is balanced as `byinflight`.
//!
//! Tests check shares against weights, identical builds, the exact set of keys that move when
//! a member goes, and the walk under the bound.

use super::{
    Candidate, Choice, LocalState, Method, Offered, Pick, Reason, Reserve, byinflight, mix, reserve_candidate,
};
use std::sync::atomic::Ordering;

/// The method.
pub struct ByHash;

impl Method for ByHash {
    fn uses_hash_key(&self) -> bool {
        true
    }

    fn choose(&self, pick: &mut Pick<'_>) -> Option<Choice> {
        let Some(key) = pick.key else { return byinflight::choose_and_reserve(pick) };
        // No tables built yet in this process (see `tables`): balanced as byinflight.
        let Some(tables) = pick.tables(true) else { return byinflight::choose_and_reserve(pick) };
        let Some(hashed) = tables.hash() else { return byinflight::choose_and_reserve(pick) };
        let hash = key_hash(key);
        let candidates = pick.candidates();
        let total: u64 = candidates.iter().map(|c| u64::from(c.inflight)).sum();
        let bound =
            pick.settings.balance_factor().map_or(u64::MAX, |c| load_bound(c, total, candidates.len()));
        let placed = {
            let Pick { local, reserve, .. } = &mut *pick;
            let LocalState { candidates, offered, seen, .. } = &mut **local;
            let mut takers = Takers { candidates, offered, reserve: &mut **reserve, hash, bound };
            place(&hashed.table, hash, seen, &mut takers).and_then(|p| Some((offered.position(p.member)?, p)))
        };
        let Some((position, placement)) = placed else { return byinflight::choose_and_reserve(pick) };
        if placement.diverted {
            pick.shared.events.diverted.fetch_add(1, Ordering::Relaxed);
        }
        Some(Choice {
            position,
            reason: Reason::Hash { steps: placement.steps, diverted: placement.diverted },
        })
    }
}

/// The members of the balancer as one key's walk meets them.
struct Takers<'a> {
    candidates: &'a mut [Candidate],
    /// Where each member is among the candidates.
    offered: &'a Offered,
    reserve: &'a mut dyn Reserve,
    hash: u64,
    bound: u64,
}

impl Holders for Takers<'_> {
    fn admission(&self, member: usize) -> Admission {
        let Some(position) = self.offered.position(member) else {
            return Admission::Pass; // unusable, or in another lbset tier
        };
        let candidate = &self.candidates[position];
        let fraction = f64::from(candidate.weight) / f64::from(candidate.lbfactor.max(1));
        if fraction < 1.0 && !ramp_admits(self.hash, fraction) {
            return Admission::Pass; // on its slow-start ramp, and not yet taking this key
        }
        Admission::UpTo(self.bound)
    }

    fn reserve(&mut self, member: usize, limit: u64) -> bool {
        match self.offered.position(member) {
            Some(position) => reserve_candidate(self.reserve, &mut self.candidates[position], limit),
            None => false,
        }
    }
}

/// Smallest table, as in the Maglev paper (a prime).
const MIN_TABLE: u64 = 65_537;

/// The lookup table for one set of members.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Table {
    /// How many members the table was built for.
    members: usize,
    /// The member (position in the list the table was built from) of each slot.
    slots: Vec<u32>,
}

impl Table {
    /// Builds the table for `members`: (stable name key, weight) each; weight 0 counts as 1.
    pub fn build(members: &[(u64, u32)]) -> Table {
        if members.is_empty() {
            return Table { members: 0, slots: Vec::new() };
        }
        let size = table_size(members.len());
        let mut slots = vec![u32::MAX; size as usize];
        let weights: Vec<u64> = members.iter().map(|&(_, w)| u64::from(w.max(1))).collect();
        let heaviest = weights.iter().copied().max().unwrap_or(1);
        let offsets: Vec<u64> = members.iter().map(|&(key, _)| mix(key) % size).collect();
        let skips: Vec<u64> = members.iter().map(|&(key, _)| mix(key ^ SKIP_SEED) % (size - 1) + 1).collect();
        let mut next = vec![0u64; members.len()];
        let mut targets = vec![0u64; members.len()];
        let mut filled = 0u64;
        let mut round = 0u64;
        while filled < size {
            round += 1;
            for member in 0..members.len() {
                if round * weights[member] < targets[member] {
                    continue; // lighter members take fewer turns
                }
                targets[member] += heaviest;
                loop {
                    let slot = ((offsets[member] + next[member] * skips[member]) % size) as usize;
                    next[member] += 1;
                    if slots[slot] == u32::MAX {
                        slots[slot] = member as u32;
                        filled += 1;
                        break;
                    }
                }
                if filled == size {
                    break;
                }
            }
        }
        Table { members: members.len(), slots }
    }

    pub fn size(&self) -> usize {
        self.slots.len()
    }

    /// Slots held by each member.
    pub fn shares(&self) -> Vec<usize> {
        let mut shares = vec![0; self.members];
        for &member in &self.slots {
            shares[member as usize] += 1;
        }
        shares
    }

    /// The members key `key_hash` tries, in order, each once: its own first (the member of its
    /// slot), then the others in the order they appear along a stride through the table that
    /// depends on the key. The stride makes the members after the first a fresh weighted draw
    /// for each key, so the keys of a member that is down spread over the others by weight.
    /// `seen` is scratch space; the walk ends as soon as every member has been met.
    pub fn walk<'a>(&'a self, key_hash: u64, seen: &'a mut Vec<bool>) -> Walk<'a> {
        let size = self.slots.len() as u64;
        let start = if size == 0 { 0 } else { key_hash % size };
        // Any stride from 1 to size - 1 visits every slot: the size is prime.
        let stride = if size < 2 { 1 } else { mix(key_hash ^ WALK_SEED) % (size - 1) + 1 };
        seen.clear();
        seen.resize(self.members, false);
        Walk { table: self, seen, left: self.members, start, stride, examined: 0 }
    }
}

/// One key's walk along the table (see [`Table::walk`]).
pub struct Walk<'a> {
    table: &'a Table,
    seen: &'a mut Vec<bool>,
    /// Members not met yet: the walk ends when none is left.
    left: usize,
    start: u64,
    stride: u64,
    /// Slots looked at so far.
    examined: u64,
}

impl Walk<'_> {
    /// How many slots the walk has looked at.
    #[cfg(test)]
    pub fn examined(&self) -> u64 {
        self.examined
    }
}

impl Iterator for Walk<'_> {
    type Item = usize;

    fn next(&mut self) -> Option<usize> {
        let size = self.table.slots.len() as u64;
        while self.left > 0 && self.examined < size {
            let slot = (self.start + self.examined * self.stride) % size;
            let member = self.table.slots[slot as usize] as usize;
            self.examined += 1;
            if !self.seen[member] {
                self.seen[member] = true;
                self.left -= 1;
                return Some(member);
            }
        }
        None
    }
}

/// What a key's walk asks of the members it meets.
pub trait Holders {
    /// Whether member `member` (its position in the table's member list) may take the key.
    fn admission(&self, member: usize) -> Admission;
    /// Takes a place on `member` if it has fewer than `limit` attempts in flight (the check
    /// and the count are one atomic step); false when it has not.
    fn reserve(&mut self, member: usize, limit: u64) -> bool;
}

/// How a member may take the key being placed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Admission {
    /// Not for this key now (unusable, another tier, or kept back by its slow-start ramp).
    Pass,
    /// Eligible, as long as it has fewer than `limit` attempts in flight (the load bound, or
    /// its cap if lower): the caller's `reserve` checks and counts in one atomic step.
    UpTo(u64),
}

/// What a key got.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Placement {
    /// Position of the member in [`Table::members`].
    pub member: usize,
    /// Steps of the walk it took (0: the key's own member).
    pub steps: usize,
    /// An eligible member earlier on the walk was too loaded (the bound or its cap).
    pub diverted: bool,
}

/// Places the key: walks its members, asking each whether it may take the key and reserving a
/// place on the first that may and has room. `None` when no member would take it.
pub fn place(
    table: &Table,
    key_hash: u64,
    seen: &mut Vec<bool>,
    holders: &mut dyn Holders,
) -> Option<Placement> {
    let mut diverted = false;
    for (steps, member) in table.walk(key_hash, seen).enumerate() {
        match holders.admission(member) {
            Admission::Pass => {}
            Admission::UpTo(limit) => {
                if holders.reserve(member, limit) {
                    return Some(Placement { member, steps, diverted });
                }
                diverted = true;
            }
        }
    }
    None
}

/// Standard deviations of chance a member's count may stand above `c * average`.
const CHANCE_MARGIN: f64 = 3.0;

/// The load bound as a limit for [`Admission::UpTo`]: a member with more than
/// `ceil(factor * average + 3 * sqrt(average))` attempts in flight is passed by, so it takes the
/// key while it has fewer than that plus one. With nothing else in flight a member always takes
/// its own keys, even when the attempt it just finished is still being released.
pub fn load_bound(factor: f64, total_inflight: u64, members: usize) -> u64 {
    let average = total_inflight as f64 / members.max(1) as f64;
    (factor * average + CHANCE_MARGIN * average.sqrt()).ceil() as u64 + 1
}

/// The hash of a request's key (FNV-1a, then mixed so that nearby keys spread out).
pub fn key_hash(key: &[u8]) -> u64 {
    mix(crate::shm::fnv1a(key))
}

/// True if a member on its slow-start ramp, at `fraction` (0..=1) of its weight, takes this
/// key yet: the same keys come back first every time, and all of them once the ramp is done.
pub fn ramp_admits(key_hash: u64, fraction: f64) -> bool {
    (mix(key_hash ^ RAMP_SEED) % 1000) as f64 <= fraction * 1000.0
}

const SKIP_SEED: u64 = 0x5bd1_e995_1b87_3593;
const WALK_SEED: u64 = 0x9fb2_1c65_1e98_df25;
const RAMP_SEED: u64 = 0x2545_f491_4f6c_dd1d;

/// The smallest prime at least `max(MIN_TABLE, 100 * members)` (next prime above it).
fn table_size(members: usize) -> u64 {
    let mut candidate = MIN_TABLE.max(101 * members as u64);
    while !is_prime(candidate) {
        candidate += 1;
    }
    candidate
}

fn is_prime(n: u64) -> bool {
    n >= 2 && (2..).take_while(|d| d * d <= n).all(|d| !n.is_multiple_of(d))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::shm::name_key;

    fn members(weights: &[u32]) -> Vec<(u64, u32)> {
        weights
            .iter()
            .enumerate()
            .map(|(i, &w)| (name_key(format!("http://10.0.0.{i}:8080").as_bytes()), w))
            .collect()
    }

    fn home(table: &Table, key: u64) -> usize {
        table.walk(key, &mut Vec::new()).next().unwrap()
    }

    fn walk(table: &Table, key: u64) -> Vec<usize> {
        table.walk(key, &mut Vec::new()).collect()
    }

    /// Holders made of two closures.
    struct Fns<A, R>(A, R);

    impl<A: Fn(usize) -> Admission, R: FnMut(usize, u64) -> bool> Holders for Fns<A, R> {
        fn admission(&self, member: usize) -> Admission {
            (self.0)(member)
        }
        fn reserve(&mut self, member: usize, limit: u64) -> bool {
            (self.1)(member, limit)
        }
    }

    fn place_with(
        table: &Table,
        key: u64,
        admission: impl Fn(usize) -> Admission,
        reserve: impl FnMut(usize, u64) -> bool,
    ) -> Option<Placement> {
        place(table, key, &mut Vec::new(), &mut Fns(admission, reserve))
    }

    #[test]
    fn shares_follow_the_weights_within_one_percent() {
        for weights in [&[100, 100, 100, 100][..], &[100, 200, 300], &[100, 150, 1000, 250, 100]] {
            let table = Table::build(&members(weights));
            let total: u32 = weights.iter().sum();
            for (share, &weight) in table.shares().iter().zip(weights) {
                let got = *share as f64 / table.size() as f64;
                let want = f64::from(weight) / f64::from(total);
                assert!((got - want).abs() < 0.01, "{weights:?}: {got:.4} vs {want:.4}");
            }
        }
    }

    #[test]
    fn the_table_is_prime_sized_and_identical_on_every_build() {
        let a = Table::build(&members(&[100, 300, 200]));
        let b = Table::build(&members(&[100, 300, 200]));
        assert_eq!(a, b);
        assert!(is_prime(a.size() as u64) && a.size() >= 65_537);
        assert!(Table::build(&members(&[100; 1000])).size() >= 100_000);
    }

    #[test]
    fn a_member_going_down_moves_only_its_own_keys_and_they_come_back() {
        let table = Table::build(&members(&[100; 5]));
        let keys: Vec<u64> = (0..50_000u64).map(|k| key_hash(&k.to_le_bytes())).collect();
        let before: Vec<usize> = keys.iter().map(|&k| home(&table, k)).collect();
        let down = 2;
        let during: Vec<usize> = keys
            .iter()
            .map(|&k| {
                place_with(
                    &table,
                    k,
                    |m| if m == down { Admission::Pass } else { Admission::UpTo(u64::MAX) },
                    |_, _| true,
                )
                .unwrap()
                .member
            })
            .collect();
        let moved = before.iter().zip(&during).filter(|(b, d)| b != d).count();
        let owned = before.iter().filter(|&&m| m == down).count();
        assert_eq!(moved, owned, "exactly the down member's keys move");
        assert!((owned as f64 / keys.len() as f64 - 0.2).abs() < 0.01, "about 1/N of the keys");
        // They spread over the other members rather than piling onto one.
        for other in (0..5).filter(|&m| m != down) {
            let got = before.iter().zip(&during).filter(|(b, d)| **b == down && **d == other).count();
            assert!((got as f64 / owned as f64 - 0.25).abs() < 0.03, "member {other} got {got} of {owned}");
        }
        let after: Vec<usize> = keys.iter().map(|&k| home(&table, k)).collect();
        assert_eq!(after, before, "when it returns, its keys come back");
    }

    #[test]
    fn a_weight_change_rebuild_moves_few_keys() {
        let before = Table::build(&members(&[100, 100, 100, 100]));
        let after = Table::build(&members(&[100, 100, 100, 200]));
        let keys: Vec<u64> = (0..20_000u64).map(|k| key_hash(&k.to_le_bytes())).collect();
        let moved = keys.iter().filter(|&&k| home(&before, k) != home(&after, k)).count();
        // Member 3 goes from 1/4 to 2/5 of the keys: at least 15% must move; Maglev moves
        // little more than that.
        assert!((moved as f64 / keys.len() as f64) < 0.22, "{moved}");
    }

    #[test]
    fn the_walk_visits_every_member_once_the_same_way_each_time() {
        let table = Table::build(&members(&[100, 200, 100, 300]));
        for key in 0..1000u64 {
            let walk = super::tests::walk(&table, key_hash(&key.to_le_bytes()));
            let mut sorted = walk.clone();
            sorted.sort_unstable();
            assert_eq!(sorted, vec![0, 1, 2, 3]);
            assert_eq!(walk, super::tests::walk(&table, key_hash(&key.to_le_bytes())));
        }
    }

    #[test]
    fn a_walk_ends_once_every_member_is_met() {
        // When no member takes the key (all at their caps, or all turning it away on their
        // ramps), the walk must not scan the rest of the 65537-slot table.
        let table = Table::build(&members(&[100, 100, 100, 100]));
        let mut seen = Vec::new();
        for key in 0..1000u64 {
            let mut walk = table.walk(key_hash(&key.to_le_bytes()), &mut seen);
            assert_eq!(walk.by_ref().count(), 4);
            assert!(walk.examined() < 200, "key {key}: {} slots looked at", walk.examined());
        }
        let nobody = place_with(&table, key_hash(b"k"), |_| Admission::Pass, |_, _| unreachable!());
        assert_eq!(nobody, None);
    }

    #[test]
    fn a_hot_key_overflows_past_the_bound_deterministically() {
        let table = Table::build(&members(&[100; 4]));
        let key = key_hash(b"hot");
        let walk = walk(&table, key);
        let mut inflight = [0u64; 4];
        let mut placements = Vec::new();
        for _ in 0..12 {
            let total: u64 = inflight.iter().sum();
            let bound = load_bound(1.25, total, 4);
            let placed = place_with(
                &table,
                key,
                |_| Admission::UpTo(bound),
                |m, limit| {
                    if inflight[m] < limit {
                        inflight[m] += 1;
                        true
                    } else {
                        false
                    }
                },
            )
            .unwrap();
            placements.push(placed);
        }
        assert_eq!(placements[0], Placement { member: walk[0], steps: 0, diverted: false });
        assert!(placements.iter().any(|p| p.diverted), "the hot key spilled over");
        let bound_at_end = load_bound(1.25, 11, 4);
        assert!(inflight.iter().all(|&n| n <= bound_at_end), "{inflight:?} within {bound_at_end}");
        // It spills in walk order: the key's own member is fullest.
        assert!(
            inflight[walk[0]] >= inflight[walk[1]] && inflight[walk[1]] >= inflight[walk[3]],
            "{inflight:?}"
        );
    }

    #[test]
    fn bounds_and_ramps() {
        assert_eq!(load_bound(1.25, 0, 4), 1);
        assert_eq!(load_bound(1.25, 1, 4), 3, "one stale attempt does not move a key");
        assert_eq!(load_bound(1.25, 12, 4), 10, "3.75 + 3 * sqrt(3) = 8.95: up to 9");
        assert_eq!(load_bound(2.0, 7, 2), 14);
        assert_eq!(load_bound(1.25, 4000, 10), 561, "at an average of 400: 500 + 60, 12% more");
        let keys: Vec<u64> = (0..10_000u64).map(|k| key_hash(&k.to_le_bytes())).collect();
        let admitted =
            |f: f64| keys.iter().filter(|&&k| ramp_admits(k, f)).count() as f64 / keys.len() as f64;
        assert!(admitted(0.1) > 0.08 && admitted(0.1) < 0.12);
        assert_eq!(admitted(1.0), 1.0);
        // Keys admitted early stay admitted as the ramp grows.
        assert!(keys.iter().all(|&k| !ramp_admits(k, 0.3) || ramp_admits(k, 0.6)));
    }

    mod properties {
        use super::*;
        use proptest::prelude::*;

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(64))]

            /// Every key's walk meets every member exactly once, the same way each time, and
            /// ends without reading the whole table.
            #[test]
            fn every_walk_is_deterministic_and_meets_each_member_once(
                weights in prop::collection::vec(1u32..1_000, 1..12),
                keys in prop::collection::vec(any::<u64>(), 1..20),
            ) {
                let table = Table::build(&members(&weights));
                let mut seen = Vec::new();
                for key in keys {
                    let mut walk = table.walk(key, &mut seen);
                    let order: Vec<usize> = walk.by_ref().collect();
                    prop_assert!(walk.examined() <= table.size() as u64);
                    let mut sorted = order.clone();
                    sorted.sort_unstable();
                    prop_assert_eq!(sorted, (0..weights.len()).collect::<Vec<_>>());
                    prop_assert_eq!(order, super::walk(&table, key));
                }
            }

            /// A placement lands on a member that admitted the key and had room under its
            /// limit, the first such one along the walk.
            #[test]
            fn a_key_goes_to_the_first_member_on_its_walk_that_takes_it(
                weights in prop::collection::vec(1u32..1_000, 1..10),
                pass_mask in any::<u16>(),
                inflight in prop::collection::vec(0u64..6, 10),
                limit in 0u64..6,
                key in any::<u64>(),
            ) {
                let table = Table::build(&members(&weights));
                let admits = |m: usize| pass_mask >> m & 1 == 0;
                let placed = place_with(
                    &table,
                    key,
                    |m| if admits(m) { Admission::UpTo(limit) } else { Admission::Pass },
                    |m, limit| inflight[m] < limit,
                );
                let expected = super::walk(&table, key).into_iter().position(|m| admits(m) && inflight[m] < limit);
                prop_assert_eq!(placed.map(|p| p.steps), expected);
            }
        }
    }
}
