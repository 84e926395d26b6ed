//! The load-balancing methods: how one member is chosen among the ones httpd says are eligible.
//!
//! httpd decides eligibility (lbset tiers, hot spares and standbys, drain, disabled, error and
//! retry, health checks); the finder weighs each eligible member (live loadfactor, slow-start
//! ramp, exact in-flight count, `LBMaxInflight` cap) into a [`Candidate`], and a method
//! chooses one and reserves a place on it through [`Pick::reserve`]. Each method's whole rule
//! is in its own file. Everything here is plain Rust, with no httpd calls, so it is tested and
//! benchmarked without a server.
//!
//! To add a method: write its file (a type that implements [`Method`]), and add one line to
//! [`METHODS`].

pub mod byhash;
pub mod byinflight;
pub mod bylatency;
pub mod byweight;
pub mod outlier;
pub mod slow_start;
pub mod tables;

use crate::config::BalancerSettings;
use crate::shm::attempt::Loans;
use crate::shm::{Attempt, BalancerSlot, Counts, Segment};
use std::ffi::CStr;
use std::fmt;
use std::sync::Arc;
pub use tables::{Member, Shelves, Tables, Tier};

/// A method's rule.
pub trait Method: Sync {
    /// Chooses one of `pick`'s candidates and reserves a place on it ([`Pick::reserve`]);
    /// `None` when none can take the request (every one is full).
    fn choose(&self, pick: &mut Pick<'_>) -> Option<Choice>;

    /// Whether the finder evaluates the balancer's `LBHashKey` for this method's picks.
    fn uses_hash_key(&self) -> bool {
        false
    }

    /// What the status page shows as each member's score (what the method ranks on, lower is
    /// better), in `members`' order; `None` where the method ranks on nothing per member.
    fn scores(&self, members: &[Scored]) -> Vec<Option<f64>> {
        vec![None; members.len()]
    }
}

/// A method as httpd knows it: the name administrators write after `lbmethod=`.
pub struct Registered {
    /// The provider name. httpd keeps it in a 16-byte field and balancer-manager refuses names
    /// of 15 characters or more.
    pub name: &'static CStr,
    pub method: &'static dyn Method,
}

/// Every method this module registers with mod_proxy_balancer.
pub static METHODS: [Registered; 4] = [
    Registered { name: c"byweight", method: &byweight::ByWeight },
    Registered { name: c"byinflight", method: &byinflight::ByInflight },
    Registered { name: c"bylatency", method: &bylatency::ByLatency },
    Registered { name: c"byhash", method: &byhash::ByHash },
];

const _: () = {
    let mut i = 0;
    while i < METHODS.len() {
        assert!(METHODS[i].name.count_bytes() <= 14);
        i += 1;
    }
};

impl Registered {
    pub fn name(&self) -> &'static str {
        self.name.to_str().unwrap_or_default()
    }
}

/// The method registered under `name`.
pub fn by_name(name: &[u8]) -> Option<&'static Registered> {
    METHODS.iter().find(|m| m.name.to_bytes() == name)
}

/// One member the method may choose, as the finder weighed it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Candidate {
    /// httpd's worker slot index (`worker->s->index`), the same in every process.
    pub worker_index: u32,
    /// Its member slot in the shared segment; `None` for a member beyond the slots httpd
    /// declared (then it is balanced, not counted).
    pub member: Option<u32>,
    /// The live loadfactor x 100 (`lbfactor`), as balancer-manager may have changed it.
    pub lbfactor: u32,
    /// The weight the method uses: `lbfactor`, reduced while the member is on its slow-start
    /// ramp.
    pub weight: u32,
    /// Attempts in flight to the member when the pick began, across all processes.
    pub inflight: u32,
    /// Its `LBMaxInflight` cap ([`NO_LIMIT`]: none).
    pub limit: u32,
    /// Found at its cap: it may not take this request.
    pub full: bool,
    /// Its lbset, and whether it is a hot standby.
    pub tier: Tier,
}

/// [`Candidate::limit`] of a member without a cap.
pub const NO_LIMIT: u32 = u32::MAX;

impl Candidate {
    /// The cap as a limit for [`Reserve::reserve`] (`u64::MAX`: none).
    pub fn cap(&self) -> u64 {
        if self.limit == NO_LIMIT { u64::MAX } else { u64::from(self.limit) }
    }
}

/// What a method chose, and why (for `LogLevel lbmethod_rs:debug`).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Choice {
    /// Position in the candidate list.
    pub position: usize,
    pub reason: Reason,
}

impl Choice {
    /// The attempt tests a member the method avoids (`bylatency`'s probe): its answer replaces
    /// the member's latency estimate, being the only recent evidence of its speed.
    pub fn is_probe(&self) -> bool {
        matches!(self.reason, Reason::Latency { probe: true, .. })
    }
}

#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Reason {
    /// `byweight`: the shared ticket and the step of the smooth cycle it landed on; `skipped`
    /// tickets landed on members that could not take the request.
    Ticket { ticket: u64, step: usize, cycle: usize, skipped: u32 },
    /// `byweight`: no ticket landed on a member that could take the request within its tries;
    /// a weighted draw chose instead.
    Drawn { ticket: u64 },
    /// `byinflight`: the chosen member's in-flight count and weight (its key is their ratio).
    LeastInflight { inflight: u32, weight: u32 },
    /// `bylatency`: the chosen member's rank (`(inflight + 1) / weight`, times its slowness
    /// outside the band), its latency estimate in microseconds, and whether it was a probe.
    Latency { rank: f64, latency_us: Option<f64>, probe: bool },
    /// `byhash`: steps along the key's walk, and whether a loaded member was passed by.
    Hash { steps: usize, diverted: bool },
}

impl fmt::Display for Reason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Reason::Ticket { ticket, step, cycle, skipped } => {
                write!(f, "ticket {ticket} is step {} of the {cycle}-step smooth cycle", step + 1)?;
                if *skipped > 0 {
                    write!(f, " ({skipped} ticket(s) before it landed on members that could not take it)")?;
                }
                Ok(())
            }
            Reason::Drawn { ticket } => write!(f, "drawn by weight with ticket {ticket}"),
            Reason::LeastInflight { inflight, weight } => {
                write!(f, "least (inflight+1)/weight: ({inflight}+1)/{weight}")
            }
            Reason::Latency { probe: true, latency_us, .. } => write!(
                f,
                "probe of a member outside the latency band (latency {})",
                latency_us.map_or("unknown".to_string(), |l| format!("{:.2} ms", l / 1000.0))
            ),
            Reason::Latency { rank, latency_us, .. } => write!(
                f,
                "least rank {rank:.4}: (inflight+1)/weight, times latency/fastest outside the band (latency {})",
                latency_us.map_or("unknown".to_string(), |l| format!("{:.2} ms", l / 1000.0))
            ),
            Reason::Hash { steps: 0, .. } => write!(f, "the key's own member"),
            Reason::Hash { steps, diverted } => write!(
                f,
                "{steps} step(s) along the key's walk{}",
                if *diverted { ", past a member at the load bound" } else { "" }
            ),
        }
    }
}

/// What the status page knows of a member, for [`Method::scores`].
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Scored {
    pub inflight: u64,
    pub weight: u32,
    /// `bylatency`'s estimate, `None` before the first sample.
    pub latency_us: Option<f64>,
}

/// Takes a place on a member: counts an attempt on it if it has fewer than `limit` in flight, in
/// one atomic step; false when it is full. [`SharedCounts`] is the real one.
pub trait Reserve {
    fn reserve(&mut self, candidate: &Candidate, limit: u64) -> bool;
}

/// Reserves on the shared in-flight counters (`shm::attempt`): the attempt a successful
/// reservation starts is kept in `taken`, for the finder to record. Places dead processes hold
/// are lent (`loans`): a candidate's `inflight` and `limit` are what live processes hold and may
/// hold, the shared count also holds the dead processes' places.
pub struct SharedCounts {
    pub counts: Counts,
    pub loans: Loans,
    pub taken: Option<Attempt>,
}

impl SharedCounts {
    pub fn new(counts: Counts) -> SharedCounts {
        SharedCounts { counts, loans: Loans::NONE, taken: None }
    }
}

impl Reserve for SharedCounts {
    fn reserve(&mut self, candidate: &Candidate, limit: u64) -> bool {
        // A member beyond the slots httpd declared: balanced, not counted.
        let Some(member) = candidate.member else { return true };
        debug_assert!(self.taken.is_none(), "a pick reserves once");
        match self.counts.begin_with(member as usize, limit, &self.loans) {
            Some(attempt) => {
                self.taken = Some(attempt);
                true
            }
            None => false,
        }
    }
}

/// Takes a place on `candidate` under `limit` and its cap; marks it full when its cap refused.
fn reserve_candidate(reserve: &mut dyn Reserve, candidate: &mut Candidate, limit: u64) -> bool {
    let reserved = reserve.reserve(candidate, limit.min(candidate.cap()));
    if !reserved && limit >= candidate.cap() {
        candidate.full = true;
    }
    reserved
}

/// This process's state for one balancer, kept between picks: the member list, the tables
/// picked from, and buffers reused by every pick so that a pick allocates nothing. Used under
/// the balancer's lock (httpd's thread lock around the finder).
#[derive(Default)]
pub struct LocalState {
    /// Every member of the balancer, usable or not, in worker index order, as this process
    /// last saw them.
    members: Vec<Member>,
    /// Counts changes of `members` (a member added, a loadfactor or a tier changed).
    generation: u64,
    /// The balancer's stamp `members` was listed for (see [`LocalState::sync_members`]).
    synced: Option<(usize, i64)>,
    /// The candidates of the pick under way, in worker index order.
    candidates: Vec<Candidate>,
    /// Where each member of the tables is among the candidates of the pick under way.
    offered: Offered,
    /// The tables picks use now ([`tables`]), the publication they came with, and whether
    /// they were built from `members` as they are.
    tables: Option<Arc<Tables>>,
    tables_version: u64,
    tables_fit: bool,
    /// The member list generation, and the need for `byhash`'s table, the tables were last
    /// checked against (and new ones asked for if they did not fit).
    checked: Option<(u64, bool)>,
    /// `byhash`: the walk's scratch.
    seen: Vec<bool>,
    /// `bylatency`: this process's view of the members' estimates and stalls.
    latency: bylatency::View,
}

/// Where each member of the tables is among the candidates of the pick under way.
#[derive(Default)]
struct Offered {
    /// Every member is a candidate, so member `i` is candidate `i`: the common case, no map.
    all: bool,
    /// Otherwise each member's candidate position, `NOT_OFFERED` for a member that is not one.
    positions: Vec<u32>,
}

const NOT_OFFERED: u32 = u32::MAX;

impl Offered {
    /// The candidate position of member `member`, if it is a candidate.
    fn position(&self, member: usize) -> Option<usize> {
        if self.all {
            return Some(member);
        }
        self.positions.get(member).filter(|&&p| p != NOT_OFFERED).map(|&p| p as usize)
    }
}

impl LocalState {
    /// Brings the member list up to date when the balancer's `stamp` (httpd's member count and
    /// the time this process's list last changed) is not the one it was made for: `fill` then
    /// lists every member. httpd only ever adds members within a generation, and stamps the
    /// list again once a member added at run time is ready.
    pub fn sync_members(&mut self, stamp: (usize, i64), fill: impl FnOnce(&mut Vec<Member>)) {
        if self.synced == Some(stamp) {
            return;
        }
        self.members.clear();
        fill(&mut self.members);
        self.members.sort_unstable_by_key(|m| m.worker_index);
        self.generation += 1;
        self.synced = Some(stamp);
    }

    /// The candidates of the last pick.
    pub fn candidates(&self) -> &[Candidate] {
        &self.candidates
    }

    /// The buffer for the next pick's candidates, emptied: push them in worker index order.
    pub fn candidates_mut(&mut self) -> &mut Vec<Candidate> {
        self.candidates.clear();
        &mut self.candidates
    }
}

/// A balancer's tables, where a pick finds them.
#[derive(Clone, Copy)]
pub struct TablesOf<'a> {
    pub shelves: &'a Arc<Shelves>,
    pub balancer: usize,
}

/// One pick in progress: what a method may read and the reservation it must make.
pub struct Pick<'a> {
    pub shared: &'a BalancerSlot,
    pub settings: &'a BalancerSettings,
    pub segment: &'a Segment,
    /// Monotonic microseconds at the start of the pick.
    pub now_us: u64,
    /// `byhash`: the request's `LBHashKey` value (`None`: no key for this request).
    pub key: Option<&'a [u8]>,
    tables: TablesOf<'a>,
    local: &'a mut LocalState,
    reserve: &'a mut dyn Reserve,
}

impl<'a> Pick<'a> {
    /// A pick over the candidates the finder put in `local` (see
    /// [`LocalState::candidates_mut`]), in worker index order, so that every process lists the
    /// same members in the same order.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        shared: &'a BalancerSlot,
        settings: &'a BalancerSettings,
        segment: &'a Segment,
        now_us: u64,
        key: Option<&'a [u8]>,
        tables: TablesOf<'a>,
        local: &'a mut LocalState,
        reserve: &'a mut dyn Reserve,
    ) -> Pick<'a> {
        debug_assert!(
            local.candidates.is_sorted_by_key(|c| c.worker_index),
            "candidates in worker index order"
        );
        Pick { shared, settings, segment, now_us, key, tables, local, reserve }
    }

    pub fn candidates(&self) -> &[Candidate] {
        &self.local.candidates
    }

    /// Takes a place on candidate `position` under its cap; a candidate found full is marked
    /// so, for the method to pass it over.
    pub fn reserve(&mut self, position: usize) -> bool {
        let limit = self.local.candidates[position].cap();
        self.reserve_under(position, limit)
    }

    /// Takes a place on candidate `position` if it has fewer than `limit` in flight (`byhash`'s
    /// load bound, or the cap if lower); a candidate found at its cap is marked full.
    pub fn reserve_under(&mut self, position: usize, limit: u64) -> bool {
        reserve_candidate(self.reserve, &mut self.local.candidates[position], limit)
    }

    /// The tables to pick from (`byhash`'s table too if `hash`), with every member of them
    /// mapped to its candidate position. On the way: a candidate whose loadfactor or tier is
    /// not the member list's updates the list (balancer-manager changed it), and tables that
    /// do not fit the list are asked for, once per change, from the builder
    /// ([`tables`]); until they come, the ones there are serve. `None` before any were built.
    fn tables(&mut self, hash: bool) -> Option<Arc<Tables>> {
        let TablesOf { shelves, balancer } = self.tables;
        let shelf = shelves.shelf(balancer)?;
        let local = &mut *self.local;
        let all_offered = note_changes(local);
        let version = shelf.version();
        if version != local.tables_version {
            local.tables = shelf.published();
            local.tables_version = version;
            local.checked = None;
        }
        if local.checked != Some((local.generation, hash)) {
            local.tables_fit = local.tables.as_ref().is_some_and(|t| t.fit(&local.members, hash));
            let asked = local.tables_fit || shelves.ask(balancer, &local.members, hash);
            // Inline builders (tests) have published already.
            if !local.tables_fit && shelf.version() != local.tables_version {
                local.tables = shelf.published();
                local.tables_version = shelf.version();
                local.tables_fit = local.tables.as_ref().is_some_and(|t| t.fit(&local.members, hash));
            }
            // Not asked (the builder was busy this moment): the next pick asks again.
            if asked {
                local.checked = Some((local.generation, hash));
            }
        }
        let tables = local.tables.clone()?;
        map_offered(&mut local.offered, &tables.members, &local.candidates, local.tables_fit && all_offered);
        Some(tables)
    }
}

/// Updates the member list where a candidate's loadfactor or tier differs from it, bumping
/// its generation: weights are checked on the way, not by a pass of their own. Candidates are
/// a subset of the members, both in worker index order. True when every member is a
/// candidate.
fn note_changes(local: &mut LocalState) -> bool {
    let LocalState { members, generation, candidates, synced, .. } = local;
    let same = |m: &Member, c: &Candidate| m.lbfactor == c.lbfactor && m.tier == c.tier;
    // Every member a candidate (the common case): one pass side by side, no search.
    if candidates.len() == members.len()
        && members.iter().zip(candidates.iter()).all(|(m, c)| m.worker_index == c.worker_index)
    {
        if !members.iter().zip(candidates.iter()).all(|(m, c)| same(m, c)) {
            for (member, candidate) in members.iter_mut().zip(candidates.iter()) {
                member.lbfactor = candidate.lbfactor;
                member.tier = candidate.tier;
            }
            *generation += 1;
        }
        return true;
    }
    let mut next = 0;
    for candidate in candidates.iter() {
        while next < members.len() && members[next].worker_index < candidate.worker_index {
            next += 1;
        }
        let Some(member) = members.get_mut(next).filter(|m| m.worker_index == candidate.worker_index) else {
            // Not in the list: httpd initialized it since the list was made (a member added at
            // run time, or one whose first initialization failed). The next pick lists again.
            *synced = None;
            continue;
        };
        if !same(member, candidate) {
            member.lbfactor = candidate.lbfactor;
            member.tier = candidate.tier;
            *generation += 1;
        }
    }
    false
}

/// Maps every member of the tables to its candidate position. When the tables were built from
/// exactly the candidates (`all`), member `i` is candidate `i`: no map.
fn map_offered(offered: &mut Offered, members: &[Member], candidates: &[Candidate], all: bool) {
    offered.all = all;
    if offered.all {
        return;
    }
    let positions = &mut offered.positions;
    positions.clear();
    positions.resize(members.len(), NOT_OFFERED);
    let mut next = 0;
    for (position, candidate) in candidates.iter().enumerate() {
        while next < members.len() && members[next].worker_index < candidate.worker_index {
            next += 1;
        }
        if members.get(next).is_some_and(|m| m.worker_index == candidate.worker_index) {
            positions[next] = position as u32;
        }
    }
}

/// A well-mixed 64-bit number from a counter or a hash (splitmix64's finalizer): the methods'
/// source of pseudo-random draws, the same in every process, with no per-thread state.
pub fn mix(counter: u64) -> u64 {
    let mut z = counter.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

#[cfg(test)]
pub(crate) mod testing;

#[cfg(test)]
mod tests {
    use super::testing::{Counts, Local, balancer, candidates, pick_once};
    use super::*;

    #[test]
    fn names_are_unique_and_found() {
        for m in &METHODS {
            assert!(std::ptr::eq(by_name(m.name.to_bytes()).unwrap(), m));
        }
        assert!(by_name(b"byrequests").is_none());
    }

    #[test]
    fn shared_counts_reserve_under_the_limit() {
        let (segment, slot) = balancer(2);
        let shared = segment.balancer(slot).unwrap();
        let index = segment.member_index(shared, 1).unwrap() as u32;
        let candidate = Candidate { member: Some(index), ..candidates(&[100, 100])[1] };
        let mut counts = SharedCounts::new(crate::shm::Counts::new(*segment, segment.claim_process(4242)));
        let mut held = Vec::new();
        for limit in [2, 2, u64::MAX] {
            assert!(counts.reserve(&candidate, limit));
            held.extend(counts.taken.take());
        }
        assert!(!counts.reserve(&candidate, 2), "full at 2");
        assert!(counts.taken.is_none());
        assert_eq!(crate::shm::attempt::inflight(&segment, index as usize), 3);
        held.into_iter().for_each(|a| a.end(crate::shm::Outcome::Completed));
    }

    #[test]
    fn a_loadfactor_change_bumps_the_generation_on_the_way() {
        let (segment, slot) = balancer(3);
        let mut local = Local::default();
        let settings = BalancerSettings::default();
        let mut counts = Counts::default();
        let c = candidates(&[100, 100, 100]);
        pick_once(&byweight::ByWeight, &segment, slot, &settings, &mut local, &c, None, &mut counts);
        let before = local.state.generation;
        pick_once(&byweight::ByWeight, &segment, slot, &settings, &mut local, &c, None, &mut counts);
        assert_eq!(local.state.generation, before, "nothing changed");
        let mut changed = c.clone();
        changed[1].lbfactor = 300;
        changed[1].weight = 300;
        pick_once(&byweight::ByWeight, &segment, slot, &settings, &mut local, &changed, None, &mut counts);
        assert_eq!(local.state.generation, before + 1);
        assert_eq!(local.state.members[1].lbfactor, 300);
    }

    /// A pick that could not hand its member list to the builder (busy this moment) asks again
    /// at the next pick: the change is not lost.
    #[test]
    fn a_request_for_tables_is_repeated_until_taken() {
        fn never(_: Box<dyn FnOnce() + Send>) -> bool {
            true
        }
        let (segment, slot) = balancer(2);
        let settings = BalancerSettings::default();
        let mut local =
            Local { shelves: Shelves::new(1, tables::Builder::Thread(never)), ..Local::default() };
        let c = candidates(&[100, 100]);
        let mut counts = Counts::default();
        let shelves = std::sync::Arc::clone(&local.shelves);
        let busy = shelves.shelf(0).unwrap().wanted.lock().unwrap();
        pick_once(&byweight::ByWeight, &segment, slot, &settings, &mut local, &c, None, &mut counts);
        assert_eq!(local.state.checked, None, "not asked: to ask again");
        drop(busy);
        pick_once(&byweight::ByWeight, &segment, slot, &settings, &mut local, &c, None, &mut counts);
        assert_eq!(local.state.checked, Some((local.state.generation, false)));
    }

    #[test]
    fn a_warm_pick_allocates_nothing() {
        // What the finder does per request once the balancer's buffers have grown: refill the
        // candidates, pick, reserve on the shared counters.
        let (segment, slot) = balancer(16);
        let shared = segment.balancer(slot).unwrap();
        let settings = BalancerSettings {
            max_inflight: Some(crate::config::Cap { limit: 1_000_000, per_loadfactor: false }),
            ..Default::default()
        };
        let mut all =
            candidates(&[100, 200, 300, 100, 500, 100, 100, 200, 100, 100, 300, 100, 100, 100, 100, 1000]);
        for (i, c) in all.iter_mut().enumerate() {
            c.member = Some(segment.member_index(shared, i).unwrap() as u32);
            c.limit = 1_000_000;
            c.inflight = i as u32 % 5;
        }
        for latency in [3_000.0, 4_000.0] {
            bylatency::record(segment.member(0).unwrap(), latency, false, false, 1, 10_000_000);
        }
        let process = crate::shm::Counts::new(*segment, segment.claim_process(777));
        for registered in &METHODS {
            let mut local = Local::default();
            let picks = |local: &mut Local, n: u64| {
                for i in 0..n {
                    let key = i.to_le_bytes();
                    let mut counts = SharedCounts::new(process);
                    let mut pick = local.pick(
                        shared,
                        &settings,
                        &segment,
                        1_000_000 + i,
                        Some(&key),
                        &all,
                        &all,
                        &mut counts,
                    );
                    let choice = registered.method.choose(&mut pick);
                    if let Some(attempt) = counts.taken.take() {
                        attempt.end(crate::shm::Outcome::Completed);
                    }
                    assert!(choice.is_some(), "{} found no member", registered.name());
                }
            };
            picks(&mut local, 10); // grows the buffers, builds the tables
            let before = crate::allocations::count();
            picks(&mut local, 1000);
            assert_eq!(crate::allocations::count() - before, 0, "{} allocated", registered.name());
        }
    }

    #[test]
    fn reason_reads_well() {
        let r = Reason::Ticket { ticket: 7, step: 1, cycle: 6, skipped: 0 };
        assert_eq!(r.to_string(), "ticket 7 is step 2 of the 6-step smooth cycle");
    }
}
