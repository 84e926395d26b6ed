//! The load-balancing methods: how one member is chosen among the ones httpd says are eligible.
//!
//! httpd decides eligibility (lbset tiers, hot spares and standbys, drain, disabled, error and
//! retry, health checks); a method only ranks the candidates it is given. Everything here is
//! plain Rust, with no httpd calls, so it is tested and benchmarked without a server.

pub mod byhash;
pub mod byinflight;
pub mod bylatency;
pub mod byweight;
pub mod slow_start;

use crate::shm::BalancerSlot;
use byhash::Table;
use byweight::Schedule;
use std::ffi::CStr;
use std::fmt;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, PoisonError};

/// The methods this module registers with mod_proxy_balancer (`ProxySet lbmethod=<name>`).
// The variants carry the names administrators type after `lbmethod=`, prefix included.
#[allow(clippy::enum_variant_names)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Method {
    ByWeight,
    ByInflight,
    ByLatency,
    ByHash,
}

impl Method {
    pub const ALL: [Method; 4] = [Method::ByWeight, Method::ByInflight, Method::ByLatency, Method::ByHash];

    /// The provider name. httpd keeps it in a 16-byte field and balancer-manager refuses names
    /// of 15 characters or more.
    pub const fn c_name(self) -> &'static CStr {
        match self {
            Method::ByWeight => c"byweight",
            Method::ByInflight => c"byinflight",
            Method::ByLatency => c"bylatency",
            Method::ByHash => c"byhash",
        }
    }

    pub fn name(self) -> &'static str {
        self.c_name().to_str().unwrap_or("")
    }

    pub fn from_name(name: &str) -> Option<Method> {
        Method::ALL.into_iter().find(|m| m.name() == name)
    }
}

const _: () = {
    let mut i = 0;
    while i < Method::ALL.len() {
        assert!(Method::ALL[i].c_name().count_bytes() <= 14);
        i += 1;
    }
};

/// One member the method may choose.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Candidate {
    /// httpd's worker slot index (`worker->s->index`), the same in every process.
    pub worker_index: u32,
    /// The weight the method uses: the live loadfactor x 100 (`lbfactor`), reduced while the
    /// member is on its slow-start ramp.
    pub weight: u32,
    /// Attempts in flight to the member now, across all processes.
    pub inflight: u64,
    /// At its `LBMaxInflight` cap: it may not take this request.
    pub full: bool,
}

/// What a method chose, and why (for `LogLevel lbmethod_rs:debug`).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Choice {
    /// Position in the candidate list.
    pub position: usize,
    pub reason: Reason,
}

#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Reason {
    /// `byweight`: the shared ticket and the step of the smooth cycle it landed on.
    Ticket { ticket: u64, step: usize, cycle: usize },
    /// `byinflight`: the chosen member's in-flight count and weight (its key is their ratio).
    LeastInflight { inflight: u64, weight: u32 },
    /// `bylatency`: the scores ([`bylatency::score`]) of the two members drawn, the chosen
    /// one first, and the chosen one's latency estimate in microseconds.
    Latency { score: f64, other_score: f64, latency_us: f64 },
    /// `byhash`: steps along the key's walk, and whether a loaded member was passed by.
    Hash { steps: usize, diverted: bool },
}

impl fmt::Display for Reason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Reason::Ticket { ticket, step, cycle } => {
                write!(f, "ticket {ticket} is step {} of the {cycle}-step smooth cycle", step + 1)
            }
            Reason::LeastInflight { inflight, weight } => {
                write!(f, "least (inflight+1)/weight: ({inflight}+1)/{weight}")
            }
            Reason::Latency { score, other_score, latency_us } => write!(
                f,
                "score {score:.3} beats {other_score:.3} (latency {:.2} ms x (inflight+1) / loadfactor)",
                latency_us / 1000.0
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

/// Per-process state of one balancer that methods keep between picks. Built from shared state
/// only, so every process holds the same thing.
#[derive(Default)]
pub struct LocalBalancer {
    /// `byweight`: the cycle for the current candidate weights.
    schedule: Mutex<Option<Arc<Schedule>>>,
    /// `byhash`: the table for the current members and weights.
    table: Mutex<Option<Arc<Table>>>,
}

impl LocalBalancer {
    /// Chooses among `candidates` (sorted by worker index, non-empty); `None` when every
    /// candidate is full.
    ///
    /// `latencies` (microseconds, one per candidate, see [`bylatency::latencies`]) are read by
    /// `bylatency` only. `byhash` places keys with [`LocalBalancer::hash_table`] and
    /// [`byhash::place`]; given no key, it chooses as `byinflight` does.
    pub fn choose(
        &self,
        method: Method,
        shared: &BalancerSlot,
        candidates: &[Candidate],
        latencies: &[f64],
    ) -> Option<Choice> {
        match method {
            Method::ByWeight => self.choose_byweight(shared, candidates),
            Method::ByInflight | Method::ByHash => {
                let start = shared.rotation.fetch_add(1, Ordering::Relaxed) as usize;
                let position = byinflight::choose(candidates, start)?;
                let Candidate { inflight, weight, .. } = candidates[position];
                Some(Choice { position, reason: Reason::LeastInflight { inflight, weight } })
            }
            Method::ByLatency => {
                let draw = shared.rotation.fetch_add(1, Ordering::Relaxed);
                let random = (bylatency::mix(2 * draw), bylatency::mix(2 * draw + 1));
                let (a, b) = bylatency::draw_two(candidates, random)?;
                let position = bylatency::better(candidates, latencies, a, b);
                let other = if position == a { b } else { a };
                let score =
                    |i: usize| bylatency::score(latencies[i], candidates[i].inflight, candidates[i].weight);
                let reason = Reason::Latency {
                    score: score(position),
                    other_score: score(other),
                    latency_us: latencies[position],
                };
                Some(Choice { position, reason })
            }
        }
    }

    /// `byhash`: the table for `members` ((name key, weight) of every member of the balancer,
    /// in worker index order), rebuilt only when they change.
    pub fn hash_table(&self, members: &[(u64, u32)]) -> Arc<Table> {
        let mut cached = self.table.lock().unwrap_or_else(PoisonError::into_inner);
        if cached.as_ref().is_none_or(|table| table.members() != members) {
            *cached = Some(Arc::new(Table::build(members)));
        }
        Arc::clone(cached.as_ref().expect("filled above"))
    }

    /// The cycle covers every candidate, full or not, so that members reaching their cap do not
    /// force rebuilds; a ticket landing on a full member is passed over for the next one.
    fn choose_byweight(&self, shared: &BalancerSlot, candidates: &[Candidate]) -> Option<Choice> {
        let schedule = self.schedule_for(candidates);
        for _ in 0..schedule.len() {
            let ticket = shared.ticket.fetch_add(1, Ordering::Relaxed);
            let (position, step) = schedule.pick(ticket)?;
            if !candidates[position].full {
                let reason = Reason::Ticket { ticket, step, cycle: schedule.len() };
                return Some(Choice { position, reason });
            }
        }
        None
    }

    /// The cycle for these candidates' weights, rebuilt only when the weights change (a member
    /// leaves or returns, balancer-manager changes a loadfactor, a slow-start ramp steps up).
    fn schedule_for(&self, candidates: &[Candidate]) -> Arc<Schedule> {
        let mut cached = self.schedule.lock().unwrap_or_else(PoisonError::into_inner);
        let same = cached.as_ref().is_some_and(|s| {
            s.weights().len() == candidates.len()
                && s.weights().iter().zip(candidates).all(|(&w, c)| w == c.weight)
        });
        if !same {
            let weights: Vec<u32> = candidates.iter().map(|c| c.weight).collect();
            *cached = Some(Arc::new(Schedule::build(&weights)));
        }
        Arc::clone(cached.as_ref().expect("filled above"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::shm::{Capacity, Segment};

    fn candidates(weights: &[u32]) -> Vec<Candidate> {
        weights
            .iter()
            .enumerate()
            .map(|(i, &weight)| Candidate { worker_index: i as u32, weight, inflight: 0, full: false })
            .collect()
    }

    #[test]
    fn names_round_trip() {
        for m in Method::ALL {
            assert_eq!(Method::from_name(m.name()), Some(m));
        }
        assert_eq!(Method::from_name("byrequests"), None);
    }

    #[test]
    fn processes_sharing_a_ticket_share_one_cycle() {
        // Two "processes" (two LocalBalancers) and one shared slot: interleaved picks still add
        // up to exact shares, because the cycle position comes from the shared ticket.
        let seg = Segment::create(Capacity { balancers: 1, members: 3, processes: 1 }).unwrap();
        let shared = seg.balancer(seg.claim_balancer(1, 3).unwrap()).unwrap();
        let (p1, p2) = (LocalBalancer::default(), LocalBalancer::default());
        let c = candidates(&[100, 200, 300]);
        let mut counts = [0; 3];
        for i in 0..600 {
            let local = if i % 3 == 0 { &p1 } else { &p2 };
            counts[local.choose(Method::ByWeight, shared, &c, &[]).unwrap().position] += 1;
        }
        assert_eq!(counts, [100, 200, 300]);
        unsafe { seg.unmap() };
    }

    #[test]
    fn byweight_passes_over_full_members_and_gives_up_when_all_are() {
        let seg = Segment::create(Capacity { balancers: 1, members: 3, processes: 1 }).unwrap();
        let shared = seg.balancer(seg.claim_balancer(1, 3).unwrap()).unwrap();
        let local = LocalBalancer::default();
        let mut c = candidates(&[100, 200, 300]);
        c[2].full = true;
        let mut counts = [0; 3];
        for _ in 0..300 {
            counts[local.choose(Method::ByWeight, shared, &c, &[]).unwrap().position] += 1;
        }
        assert_eq!(counts, [100, 200, 0]);
        c.iter_mut().for_each(|c| c.full = true);
        assert_eq!(local.choose(Method::ByWeight, shared, &c, &[]), None);
        unsafe { seg.unmap() };
    }

    #[test]
    fn byinflight_rotates_its_scan_through_the_shared_slot() {
        let seg = Segment::create(Capacity { balancers: 1, members: 3, processes: 1 }).unwrap();
        let shared = seg.balancer(seg.claim_balancer(1, 3).unwrap()).unwrap();
        let local = LocalBalancer::default();
        let idle = candidates(&[100, 100, 100]);
        let picks: Vec<usize> =
            (0..6).map(|_| local.choose(Method::ByInflight, shared, &idle, &[]).unwrap().position).collect();
        assert_eq!(picks, vec![0, 1, 2, 0, 1, 2]);
        unsafe { seg.unmap() };
    }

    #[test]
    fn reason_reads_well() {
        let r = Reason::Ticket { ticket: 7, step: 1, cycle: 6 };
        assert_eq!(r.to_string(), "ticket 7 is step 2 of the 6-step smooth cycle");
    }
}
