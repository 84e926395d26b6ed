//! The tables `byweight` and `byhash` pick from (a smooth cycle per tier, a Maglev table),
//! built where no request waits.
//!
//! A table is a pure function of the balancer's members: their names, loadfactors and tiers.
//! At 1000 members of distinct loadfactors a `byweight` cycle takes tens of milliseconds to
//! build and a `byhash` table several (docs/benchmark.md), far too long for a pick, which runs
//! under httpd's balancer lock with every other thread of the process waiting. So:
//!
//! - httpd's parent builds each balancer's tables at startup, before it forks: every child
//!   starts with them;
//! - a pick that finds the members changed (one added at run time, a loadfactor or a tier
//!   changed in balancer-manager) hands the new member list to this process's builder
//!   thread, started the first time it is needed, and goes on picking from the tables it has;
//! - the builder publishes new tables, which the next pick takes (an `Arc` swapped under a
//!   lock that is only ever held for that swap).
//!
//! So a pick never builds, never waits for a build, and allocates nothing. Until new tables
//! are published, picks use the previous ones: for those few milliseconds a new member gets
//! no `byweight` ticket and no `byhash` key, and a changed loadfactor is not yet applied.

use super::byhash::Table;
use super::byweight::Schedule;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, PoisonError};

/// Where a member takes requests: its `lbset`, and whether it is a hot standby (`+H`), which
/// httpd offers only when no other member of its lbset can take the request. A pick's
/// candidates are always of one tier.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct Tier {
    pub lbset: i32,
    pub standby: bool,
}

/// One member of the balancer, usable or not, as the tables are built from it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Member {
    pub worker_index: u32,
    /// Stable hash of its name ([`crate::shm::name_key`]).
    pub key: u64,
    pub lbfactor: u32,
    pub tier: Tier,
}

/// The tables for one member list.
#[derive(Debug)]
pub struct Tables {
    /// What they were built from, in worker index order.
    pub members: Vec<Member>,
    /// `byweight`: one smooth cycle per tier, over that tier's members (its steps are
    /// positions in `members`), so that a ticket never lands on a member of another tier.
    cycles: Vec<(Tier, Schedule)>,
    /// `byhash`: the table over every member, and each member's share of it.
    hash: Option<HashTable>,
}

/// `byhash`'s table and what the status page shows of it, computed once with it.
#[derive(Debug)]
pub struct HashTable {
    pub table: Table,
    /// Each member's share of the table (0 to 1), in `Tables::members` order.
    pub shares: Vec<f64>,
}

impl Tables {
    /// Builds the tables for `members` (in worker index order); `byhash`'s only if `hash`.
    pub fn build(members: &[Member], hash: bool) -> Tables {
        let mut tiers: Vec<Tier> = members.iter().map(|m| m.tier).collect();
        tiers.sort_unstable_by_key(|t| (t.lbset, t.standby));
        tiers.dedup();
        let cycles = tiers
            .into_iter()
            .map(|tier| {
                let positions: Vec<u32> =
                    (0..members.len() as u32).filter(|&i| members[i as usize].tier == tier).collect();
                let weights: Vec<u32> = positions.iter().map(|&i| members[i as usize].lbfactor).collect();
                (tier, Schedule::build_over(&weights, &positions))
            })
            .collect();
        let hash = hash.then(|| {
            let table = Table::build(&members.iter().map(|m| (m.key, m.lbfactor)).collect::<Vec<_>>());
            let size = table.size().max(1) as f64;
            let shares = table.shares().into_iter().map(|s| s as f64 / size).collect();
            HashTable { table, shares }
        });
        Tables { members: members.to_vec(), cycles, hash }
    }

    /// `byweight`'s cycle for the members of `tier`.
    pub fn cycle(&self, tier: Tier) -> Option<&Schedule> {
        self.cycles.iter().find(|(t, _)| *t == tier).map(|(_, cycle)| cycle)
    }

    pub fn hash(&self) -> Option<&HashTable> {
        self.hash.as_ref()
    }

    /// Built from exactly `members`, with `byhash`'s table if `hash`.
    pub fn fit(&self, members: &[Member], hash: bool) -> bool {
        self.members == members && (!hash || self.hash.is_some())
    }
}

/// How a process builds the tables its picks ask for.
pub enum Builder {
    /// In a thread of its own, started by this function the first time it is needed (httpd's
    /// glue passes one that keeps httpd's signals away from the thread); false if it could not
    /// start one (the next request for tables tries again).
    Thread(fn(Box<dyn FnOnce() + Send>) -> bool),
    /// At once, in the pick that asks (unit tests, where waiting is not the point).
    #[cfg_attr(not(test), allow(dead_code))]
    Inline,
}

/// The tables of every balancer of a generation, in one process: what is published, what
/// picks ask for, and the builder that turns the one into the other.
pub struct Shelves {
    shelves: Vec<Shelf>,
    builder: Builder,
    started: AtomicBool,
    /// Something was asked for since the builder last looked.
    asked: Mutex<bool>,
    wake: Condvar,
}

/// One balancer's tables.
#[derive(Default)]
pub struct Shelf {
    published: Mutex<Published>,
    /// Bumped with every publication, so that a pick sees a new one with one load.
    version: AtomicU64,
    /// The member list picks want tables for, and whether with `byhash`'s table.
    pub(super) wanted: Mutex<Wanted>,
}

/// The tables published last, and the ones before: kept until the next publication, so that
/// the picks that move on from them do not free them (the builder does).
#[derive(Default)]
struct Published {
    last: Option<Arc<Tables>>,
    before: Option<Arc<Tables>>,
}

#[derive(Default)]
pub(super) struct Wanted {
    members: Vec<Member>,
    hash: bool,
    /// Not built yet.
    open: bool,
}

impl Shelves {
    pub fn new(balancers: usize, builder: Builder) -> Arc<Shelves> {
        Arc::new(Shelves {
            shelves: (0..balancers).map(|_| Shelf::default()).collect(),
            builder,
            started: AtomicBool::new(false),
            asked: Mutex::new(false),
            wake: Condvar::new(),
        })
    }

    pub fn shelf(&self, balancer: usize) -> Option<&Shelf> {
        self.shelves.get(balancer)
    }

    /// Publishes `tables` at once (httpd's parent, at startup).
    pub fn publish_now(&self, balancer: usize, tables: Arc<Tables>) {
        if let Some(shelf) = self.shelf(balancer) {
            shelf.publish(tables);
        }
    }

    /// Asks for tables for `members`: copies them for the builder and wakes it; never waits.
    /// False if the builder was reading a request this very moment: ask again at the next pick.
    /// Allocates only when the list is longer than any asked for before.
    pub fn ask(self: &Arc<Self>, balancer: usize, members: &[Member], hash: bool) -> bool {
        let Some(shelf) = self.shelf(balancer) else { return true };
        {
            let Ok(mut wanted) = shelf.wanted.try_lock() else { return false };
            if wanted.open && wanted.hash == hash && wanted.members == members {
                return true;
            }
            wanted.members.clear();
            wanted.members.extend_from_slice(members);
            wanted.hash = hash;
            wanted.open = true;
        }
        match self.builder {
            Builder::Inline => self.build_asked(),
            Builder::Thread(_) => {
                self.start_builder();
                *self.asked.lock().unwrap_or_else(PoisonError::into_inner) = true;
                self.wake.notify_one();
            }
        }
        true
    }

    /// Starts this process's builder thread, if it is not running yet (a child starts it
    /// before it serves, so that no pick pays for that).
    pub fn start_builder(self: &Arc<Self>) {
        if let Builder::Thread(spawn) = self.builder
            && !self.started.swap(true, Ordering::AcqRel)
        {
            let shelves = Arc::clone(self);
            if !spawn(Box::new(move || shelves.run())) {
                self.started.store(false, Ordering::Release);
            }
        }
    }

    /// The builder thread: builds whatever is asked for, for as long as the process lives.
    fn run(&self) {
        loop {
            {
                let mut asked = self.asked.lock().unwrap_or_else(PoisonError::into_inner);
                while !*asked {
                    asked = self.wake.wait(asked).unwrap_or_else(PoisonError::into_inner);
                }
                *asked = false;
            }
            self.build_asked();
        }
    }

    /// Builds and publishes every balancer's tables that were asked for.
    fn build_asked(&self) {
        for shelf in &self.shelves {
            let request = {
                let mut wanted = shelf.wanted.lock().unwrap_or_else(PoisonError::into_inner);
                if !wanted.open {
                    continue;
                }
                wanted.open = false;
                (wanted.members.clone(), wanted.hash)
            };
            shelf.publish(Arc::new(Tables::build(&request.0, request.1)));
        }
    }
}

impl Shelf {
    fn publish(&self, tables: Arc<Tables>) {
        let freed = {
            let mut published = self.published.lock().unwrap_or_else(PoisonError::into_inner);
            let previous = published.last.replace(tables);
            std::mem::replace(&mut published.before, previous)
        };
        self.version.fetch_add(1, Ordering::Release);
        drop(freed);
    }

    /// The tables published last, if any.
    pub fn published(&self) -> Option<Arc<Tables>> {
        self.published.lock().unwrap_or_else(PoisonError::into_inner).last.clone()
    }

    /// Counts publications (a pick compares it with the one it holds).
    pub fn version(&self) -> u64 {
        self.version.load(Ordering::Acquire)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, Instant};

    fn members(weights: &[(u32, i32, bool)]) -> Vec<Member> {
        weights
            .iter()
            .enumerate()
            .map(|(i, &(lbfactor, lbset, standby))| Member {
                worker_index: i as u32,
                key: i as u64 + 1,
                lbfactor,
                tier: Tier { lbset, standby },
            })
            .collect()
    }

    #[test]
    fn one_cycle_per_tier_over_its_own_members() {
        // Two primaries, two standbys, one member of lbset 1.
        let list =
            members(&[(100, 0, false), (200, 0, true), (300, 0, false), (100, 0, true), (100, 1, false)]);
        let tables = Tables::build(&list, false);
        let primaries = tables.cycle(Tier { lbset: 0, standby: false }).unwrap();
        assert_eq!(primaries.len(), 4, "1:3");
        let landed: Vec<usize> = (0..4).map(|t| primaries.pick(t).unwrap().0).collect();
        assert!(landed.iter().all(|&m| m == 0 || m == 2), "{landed:?}");
        assert_eq!(landed.iter().filter(|&&m| m == 2).count(), 3);
        let standbys = tables.cycle(Tier { lbset: 0, standby: true }).unwrap();
        assert!((0..3).all(|t| [1, 3].contains(&standbys.pick(t).unwrap().0)));
        assert_eq!(tables.cycle(Tier { lbset: 1, standby: false }).unwrap().pick(7).unwrap().0, 4);
        assert!(tables.hash().is_none());
    }

    #[test]
    fn the_hash_table_comes_with_its_shares() {
        let list = members(&[(100, 0, false), (300, 0, false)]);
        let tables = Tables::build(&list, true);
        let shares = &tables.hash().unwrap().shares;
        assert!((shares[0] - 0.25).abs() < 0.01 && (shares[1] - 0.75).abs() < 0.01, "{shares:?}");
        assert!(tables.fit(&list, true) && tables.fit(&list, false));
        assert!(!Tables::build(&list, false).fit(&list, true));
    }

    fn spawn(body: Box<dyn FnOnce() + Send>) -> bool {
        std::thread::spawn(body);
        true
    }

    #[test]
    fn a_request_the_builder_could_not_take_is_reported() {
        fn never(_: Box<dyn FnOnce() + Send>) -> bool {
            true
        }
        let shelves = Shelves::new(1, Builder::Thread(never));
        let list = members(&[(100, 0, false)]);
        let busy = shelves.shelf(0).unwrap().wanted.lock().unwrap();
        assert!(!shelves.ask(0, &list, false), "the builder holds the request: not asked");
        drop(busy);
        assert!(shelves.ask(0, &list, false));
        assert!(shelves.ask(0, &list, false), "asked already");
    }

    #[test]
    fn the_builder_thread_publishes_what_was_asked() {
        let shelves = Shelves::new(2, Builder::Thread(spawn));
        let list = members(&[(100, 0, false), (200, 0, false)]);
        assert!(shelves.shelf(1).unwrap().published().is_none());
        shelves.ask(1, &list, true);
        let deadline = Instant::now() + Duration::from_secs(10);
        while shelves.shelf(1).unwrap().version() == 0 {
            assert!(Instant::now() < deadline, "never published");
            std::thread::sleep(Duration::from_millis(1));
        }
        assert!(shelves.shelf(1).unwrap().published().unwrap().fit(&list, true));
        assert!(shelves.shelf(0).unwrap().published().is_none(), "only what was asked");
    }
}
