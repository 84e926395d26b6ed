//! One configuration generation as this process sees it: the shared segment, the per-process
//! state and the settings of every balancer, which httpd balancer maps to which slot, and this
//! process's own process slot.
//!
//! The httpd parent builds it in post_config, before it forks, so every child inherits the same
//! mapping. A graceful restart builds a new one; children of the old generation keep theirs.

use crate::config::BalancerSettings;
use crate::ffi;
use crate::methods::{LocalState, SharedCounts};
use crate::shm::{BalancerSlot, Segment};
use std::collections::HashMap;
use std::sync::atomic::AtomicI32;
use std::sync::{Mutex, MutexGuard, OnceLock, PoisonError};

pub struct Generation {
    segment: Segment,
    /// Indexed like the segment's balancer slots.
    local: Vec<Mutex<Local>>,
    /// Indexed like the segment's balancer slots (defaults for balancers met at run time).
    settings: Vec<BalancerSettings>,
    /// Balancers known at startup, by the address of their `proxy_balancer_shared` (unique per
    /// balancer and virtual host, the same in every child).
    configured: HashMap<usize, usize>,
    /// Balancers this process first met at run time (slots claimed from the spares).
    discovered: Mutex<HashMap<usize, usize>>,
    /// This process's slot in the segment's process table (set once, in each child).
    process: OnceLock<Option<usize>>,
}

/// A balancer's slot: its shared counters, this process's state for it, and its settings.
pub struct BalancerRef<'a> {
    pub shared: &'a BalancerSlot,
    local: &'a Mutex<Local>,
    pub settings: &'a BalancerSettings,
}

impl BalancerRef<'_> {
    /// This process's state for the balancer. Taken by the finder, which httpd already runs
    /// under the balancer's thread lock (so it never waits here), and by the status page.
    pub fn local(&self) -> MutexGuard<'_, Local> {
        self.local.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// This process's state for one balancer: the methods' tables and buffers, and the buffer the
/// finder collects httpd's eligible members in. Reused by every pick: no allocation once warm.
#[derive(Default)]
pub struct Local {
    pub methods: LocalState,
    pub offered: Vec<*mut ffi::proxy_worker>,
}

// SAFETY: the worker pointers are httpd's, valid for the whole generation in this process, and
// only used under the balancer's lock.
unsafe impl Send for Local {}

/// What the parent found for one startup balancer.
pub struct Configured {
    /// The balancer's identity (see [`Generation`]).
    pub id: usize,
    pub slot: usize,
    pub settings: BalancerSettings,
}

impl Generation {
    pub fn new(segment: Segment, configured: Vec<Configured>) -> Generation {
        let slots = segment.capacity().balancers as usize;
        let local = (0..slots).map(|_| Mutex::new(Local::default())).collect();
        let mut settings = vec![BalancerSettings::default(); slots];
        let mut ids = HashMap::new();
        for balancer in configured {
            if let Some(place) = settings.get_mut(balancer.slot) {
                *place = balancer.settings;
            }
            ids.insert(balancer.id, balancer.slot);
        }
        Generation {
            segment,
            local,
            settings,
            configured: ids,
            discovered: Mutex::new(HashMap::new()),
            process: OnceLock::new(),
        }
    }

    pub fn segment(&self) -> &Segment {
        &self.segment
    }

    /// The slot of the balancer whose identity is `id`. A balancer not seen at startup claims a
    /// spare slot by its name key (`key_and_size` gives the key and its member capacity).
    pub fn slot_of(&self, id: usize, key_and_size: impl FnOnce() -> (u64, u32)) -> Option<usize> {
        let slot = match self.configured.get(&id) {
            Some(&slot) => slot,
            None => {
                let mut discovered = self.discovered.lock().unwrap_or_else(PoisonError::into_inner);
                match discovered.get(&id) {
                    Some(&slot) => slot,
                    None => {
                        let (key, members) = key_and_size();
                        let slot = self.segment.claim_balancer(key, members)?;
                        discovered.insert(id, slot);
                        slot
                    }
                }
            }
        };
        Some(slot)
    }

    /// The balancer in `slot`, if the slot exists.
    pub fn slot(&self, slot: usize) -> Option<BalancerRef<'_>> {
        Some(BalancerRef {
            shared: self.segment.balancer(slot)?,
            local: self.local.get(slot)?,
            settings: self.settings.get(slot)?,
        })
    }

    /// The slot already given to balancer `id`, without claiming one.
    pub fn known_slot(&self, id: usize) -> Option<usize> {
        self.configured
            .get(&id)
            .copied()
            .or_else(|| self.discovered.lock().unwrap_or_else(PoisonError::into_inner).get(&id).copied())
    }

    /// Claims this process's slot in the process table (once per process: call from each
    /// child as it starts). `false` when the table is full.
    pub fn join_as_process(&self, pid: u32) -> bool {
        self.process.get_or_init(|| self.segment.claim_process(pid)).is_some()
    }

    /// This process's own in-flight count for the member in segment-wide slot `member`.
    pub fn my_contribution(&self, member: usize) -> Option<&AtomicI32> {
        let process = (*self.process.get()?)?;
        self.segment.contribution(process, member)
    }

    /// The in-flight counters as this process reserves on them.
    pub fn counts(&self) -> SharedCounts<'_> {
        SharedCounts { segment: &self.segment, process: self.process.get().copied().flatten() }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::shm::{Capacity, name_key};
    use std::time::Duration;

    #[test]
    fn startup_balancers_map_directly_and_newcomers_claim_spares() {
        let seg = Segment::create(Capacity { balancers: 3, members: 12, processes: 1 }).unwrap();
        let slot = seg.claim_balancer(name_key(b"p1_app"), 4).unwrap();
        let settings = BalancerSettings { slow_start: Some(Duration::from_secs(3)), ..Default::default() };
        let generation =
            Generation::new(seg, vec![Configured { id: 0x1000, slot, settings: settings.clone() }]);

        let known = generation
            .slot(generation.slot_of(0x1000, || unreachable!("configured: no claim")).unwrap())
            .unwrap();
        assert!(std::ptr::eq(known.shared, seg.balancer(slot).unwrap()));
        assert_eq!(known.settings, &settings);

        let newcomer =
            generation.slot(generation.slot_of(0x2000, || (name_key(b"p1_late"), 4)).unwrap()).unwrap();
        let late = generation.known_slot(0x2000).unwrap();
        assert_ne!(late, slot);
        assert!(std::ptr::eq(newcomer.shared, seg.balancer(late).unwrap()));
        assert_eq!(newcomer.settings, &BalancerSettings::default());
        assert_eq!(generation.slot_of(0x2000, || unreachable!("cached after the claim")), Some(late));
        assert_eq!(generation.known_slot(0x3000), None);
        unsafe { seg.unmap() };
    }

    #[test]
    fn a_process_joins_once_and_gets_its_own_row() {
        let seg = Segment::create(Capacity { balancers: 1, members: 2, processes: 1 }).unwrap();
        let generation = Generation::new(seg, Vec::new());
        assert!(generation.my_contribution(0).is_none(), "not joined yet");
        assert!(generation.join_as_process(4242));
        assert!(generation.join_as_process(9999), "already joined: keeps its slot");
        assert!(generation.my_contribution(1).is_some());
        let other = Generation::new(seg, Vec::new());
        assert!(!other.join_as_process(777), "the only process slot is taken");
        unsafe { seg.unmap() };
    }
}
