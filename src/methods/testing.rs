//! Helpers for the methods' unit tests: candidates, plain counters to reserve on, a balancer
//! slot in a real segment, and one pick.

use super::{Candidate, Choice, LocalState, Member, Method, NO_LIMIT, Pick, Reserve};
use crate::config::BalancerSettings;
use crate::shm::{Capacity, Segment, name_key};

/// Candidates of these weights, idle, uncapped, without member slots.
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
        })
        .collect()
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
pub fn balancer(members: u32) -> (Segment, usize) {
    let segment = Segment::create(Capacity { balancers: 1, members, processes: 2 }).unwrap();
    let slot = segment.claim_balancer(name_key(b"balancer://test"), members).unwrap();
    (segment, slot)
}

/// One pick by `method` over `candidates`, with `local` kept between picks.
#[allow(clippy::too_many_arguments)]
pub fn pick_once(
    method: &dyn Method,
    segment: &Segment,
    slot: usize,
    settings: &BalancerSettings,
    local: &mut LocalState,
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
    local: &mut LocalState,
    members: &[Candidate],
    offered: &[Candidate],
    key: Option<&[u8]>,
    reserve: &mut dyn Reserve,
) -> Option<Choice> {
    local.sync_members(members.len(), |list| {
        list.extend(members.iter().map(|c| Member {
            worker_index: c.worker_index,
            key: name_key(format!("http://10.0.0.{}:8080", c.worker_index).as_bytes()),
            lbfactor: c.lbfactor,
        }))
    });
    local.candidates_mut().extend_from_slice(offered);
    let shared = segment.balancer(slot).unwrap();
    let mut pick = Pick::new(shared, settings, segment, 1_000_000, key, local, reserve);
    method.choose(&mut pick)
}
