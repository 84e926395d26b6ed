//! One configuration generation as this process sees it: the shared segment, every balancer's
//! slot, settings, tables and per-process state, and this process's row of counts.
//!
//! The httpd parent builds it in post_config, before it forks, so every child inherits the same
//! mapping and the same first tables. A graceful restart builds a new one; children of the old
//! generation keep theirs.

use crate::config::BalancerSettings;
use crate::httpd::Worker;
use crate::methods::tables::Builder;
use crate::methods::{LocalState, Member, Shelves, Tables, TablesOf};
use crate::shm::{BalancerSlot, Counts, Segment};
use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard, OnceLock, PoisonError};

pub struct Generation {
    segment: Segment,
    /// Indexed like the segment's balancer slots.
    local: Vec<Mutex<Local>>,
    settings: Vec<BalancerSettings>,
    shelves: Arc<Shelves>,
    /// Balancers by the address of their `proxy_balancer_shared` (unique per balancer and
    /// virtual host, the same in every child).
    slots: HashMap<usize, usize>,
    /// This process's slot in the segment's process table (set once, in each child).
    process: OnceLock<Option<usize>>,
    /// Some balancer used `byweight` or `byhash` at startup.
    uses_tables: bool,
}

/// A balancer's slot: its shared counters, this process's state for it, its settings, and
/// where its tables are.
pub struct BalancerRef<'a> {
    pub index: usize,
    pub shared: &'a BalancerSlot,
    local: &'a Mutex<Local>,
    pub settings: &'a BalancerSettings,
    pub tables: TablesOf<'a>,
}

impl BalancerRef<'_> {
    /// This process's state for the balancer. Taken by the finder, which httpd already runs
    /// under the balancer's thread lock (so it never waits here).
    pub fn local(&self) -> MutexGuard<'_, Local> {
        self.local.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// This process's state for one balancer: the method's state and buffers, and the buffer the
/// finder collects httpd's eligible members in. Reused by every pick: no allocation once warm.
#[derive(Default)]
pub struct Local {
    pub methods: LocalState,
    pub offered: Vec<Worker>,
}

/// What the parent found for one balancer at startup.
pub struct Configured {
    /// The balancer's identity (see [`Generation`]).
    pub id: usize,
    pub slot: usize,
    pub settings: BalancerSettings,
    /// Its members, and whether it uses `byweight` or `byhash` now (`byhash`): its first tables
    /// are built before the children start.
    pub members: Vec<Member>,
    pub tables: bool,
    pub hashes: bool,
}

impl Generation {
    pub fn new(segment: Segment, configured: Vec<Configured>) -> Generation {
        let slots = segment.capacity().balancers as usize;
        let local = (0..slots).map(|_| Mutex::new(Local::default())).collect();
        let mut settings = vec![BalancerSettings::default(); slots];
        let shelves = Shelves::new(slots, Builder::Thread(spawn_builder));
        let mut ids = HashMap::new();
        let uses_tables = configured.iter().any(|b| b.tables);
        // Virtual hosts' copies of a balancer have the same members: one build serves them all.
        let mut built: Vec<(Vec<Member>, bool, Arc<Tables>)> = Vec::new();
        for balancer in configured {
            if let Some(place) = settings.get_mut(balancer.slot) {
                *place = balancer.settings;
            }
            let tables = match built.iter().find(|(m, h, _)| *m == balancer.members && *h == balancer.hashes)
            {
                Some((_, _, tables)) => Arc::clone(tables),
                None => {
                    let tables = Arc::new(Tables::build(&balancer.members, balancer.hashes));
                    built.push((balancer.members, balancer.hashes, Arc::clone(&tables)));
                    tables
                }
            };
            shelves.publish_now(balancer.slot, tables);
            ids.insert(balancer.id, balancer.slot);
        }
        Generation { segment, local, settings, shelves, slots: ids, process: OnceLock::new(), uses_tables }
    }

    /// Starts this process's table builder, if a balancer picks from tables (a child, before it
    /// serves: no pick then pays for starting it).
    pub fn start_table_builder(&self) {
        if self.uses_tables {
            self.shelves.start_builder();
        }
    }

    pub fn segment(&self) -> &Segment {
        &self.segment
    }

    /// The slot of the balancer whose identity is `id`, if it was there at startup.
    pub fn balancer(&self, id: usize) -> Option<BalancerRef<'_>> {
        let index = *self.slots.get(&id)?;
        Some(BalancerRef {
            index,
            shared: self.segment.balancer(index)?,
            local: self.local.get(index)?,
            settings: self.settings.get(index)?,
            tables: TablesOf { shelves: &self.shelves, balancer: index },
        })
    }

    /// Claims this process's slot in the process table (once per process: call from each
    /// child as it starts). `false` when the table is full.
    pub fn join_as_process(&self, pid: u32) -> bool {
        self.process.get_or_init(|| self.segment.claim_process(pid)).is_some()
    }

    /// The counts this process keeps (its row of the segment).
    pub fn counts(&self) -> Counts {
        Counts::new(self.segment, self.process.get().copied().flatten())
    }
}

/// Starts a process's table builder (`methods::tables`) in a thread that leaves httpd's
/// signals alone.
fn spawn_builder(body: Box<dyn FnOnce() + Send>) -> bool {
    crate::httpd::process::spawn_quiet("lbrs-tables", body)
}
