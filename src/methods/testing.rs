//! Helpers for the methods' unit tests: candidates, plain counters to reserve on, a balancer
//! slot in a real segment, one process's state with tables built inline, and one pick.

use super::tables::Builder;
use super::{
    Candidate, Choice, LocalState, Member, Method, NO_LIMIT, Pick, Reserve, Shelves, TablesOf, Tier,
};
use crate::config::BalancerSettings;
use crate::shm::testing::Mapped;
use crate::shm::{BalancerSlot, Capacity, Segment, name_key};
use std::sync::Arc;

/// Candidates of these weights, idle, uncapped, without member slots, all in one tier.
pub fn candidates(weights: &[u32]) -> Vec<Candidate> {
    weights
        .iter()
        .enumerate()
        .map(|(i, &weight)| Candidate {
            worker_index: i as u32,
            member: None,
            lbfactor: weight,
            weight,
            inflight: 0,
            limit: NO_LIMIT,
            full: false,
            tier: Tier::default(),
        })
        .collect()
}

/// The balancer's members, as the finder lists them, for these candidates.
pub fn members_of(candidates: &[Candidate]) -> impl Iterator<Item = Member> + '_ {
    candidates.iter().map(|c| Member {
        worker_index: c.worker_index,
        key: name_key(format!("http://10.0.0.{}:8080", c.worker_index).as_bytes()),
        lbfactor: c.lbfactor,
        tier: c.tier,
    })
}

/// Reserves on plain counters, refusing members at their limit.
#[derive(Default)]
pub struct Counts(pub Vec<u64>);

impl Reserve for Counts {
    fn reserve(&mut self, candidate: &Candidate, limit: u64) -> bool {
        let index = candidate.worker_index as usize;
        if self.0.len() <= index {
            self.0.resize(index + 1, 0);
        }
        if self.0[index] >= limit {
            return false;
        }
        self.0[index] += 1;
        true
    }
}

/// A balancer slot in a fresh segment, with `members` member slots.
pub fn balancer(members: u32) -> (Mapped, usize) {
    let segment = Mapped::new(Capacity { balancers: 1, members, processes: 2 });
    let slot = segment.claim_balancer(name_key(b"balancer://test"), members).unwrap();
    (segment, slot)
}

/// One process's state for one balancer, with its tables built inline when asked for.
pub struct Local {
    pub state: LocalState,
    pub shelves: Arc<Shelves>,
}

impl Default for Local {
    fn default() -> Local {
        Local { state: LocalState::default(), shelves: Shelves::new(1, Builder::Inline) }
    }
}

impl Local {
    /// A pick over `offered` (in worker index order), the balancer's members being `members`.
    #[allow(clippy::too_many_arguments)]
    pub fn pick<'a>(
        &'a mut self,
        shared: &'a BalancerSlot,
        settings: &'a BalancerSettings,
        segment: &'a Segment,
        now_us: u64,
        key: Option<&'a [u8]>,
        members: &[Candidate],
        offered: &[Candidate],
        reserve: &'a mut dyn Reserve,
    ) -> Pick<'a> {
        self.state.sync_members((members.len(), 0), |list| list.extend(members_of(members)));
        self.state.candidates_mut().extend_from_slice(offered);
        let tables = TablesOf { shelves: &self.shelves, balancer: 0 };
        Pick::new(shared, settings, segment, now_us, key, tables, &mut self.state, reserve)
    }
}

/// One pick by `method` over `candidates`, with `local` kept between picks.
#[allow(clippy::too_many_arguments)]
pub fn pick_once(
    method: &dyn Method,
    segment: &Segment,
    slot: usize,
    settings: &BalancerSettings,
    local: &mut Local,
    candidates: &[Candidate],
    key: Option<&[u8]>,
    reserve: &mut dyn Reserve,
) -> Option<Choice> {
    pick_offered(method, segment, slot, settings, local, candidates, candidates, key, reserve)
}

/// One pick by `method` in a balancer of `members` (as candidates) where httpd offered
/// only `offered`.
#[allow(clippy::too_many_arguments)]
pub fn pick_offered(
    method: &dyn Method,
    segment: &Segment,
    slot: usize,
    settings: &BalancerSettings,
    local: &mut Local,
    members: &[Candidate],
    offered: &[Candidate],
    key: Option<&[u8]>,
    reserve: &mut dyn Reserve,
) -> Option<Choice> {
    let shared = segment.balancer(slot).unwrap();
    let mut pick = local.pick(shared, settings, segment, 1_000_000, key, members, offered, reserve);
    method.choose(&mut pick)
}
