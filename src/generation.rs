//! One configuration generation as this process sees it: the shared segment, the per-process
//! state of every balancer, and which httpd balancer maps to which slot.
//!
//! The httpd parent builds it in post_config, before it forks, so every child inherits the same
//! mapping. A graceful restart builds a new one; children of the old generation keep theirs.

use crate::methods::LocalBalancer;
use crate::shm::{BalancerSlot, Segment};
use std::collections::HashMap;
use std::sync::{Mutex, PoisonError};

pub struct Generation {
    segment: Segment,
    /// Indexed like the segment's balancer slots.
    local: Vec<LocalBalancer>,
    /// Balancers known at startup, by the address of their `proxy_balancer_shared` (unique per
    /// balancer and virtual host, the same in every child).
    configured: HashMap<usize, usize>,
    /// Balancers this process first met at run time (slots claimed from the spares).
    discovered: Mutex<HashMap<usize, usize>>,
}

/// A balancer's slot: its shared counters and this process's state for it.
pub struct BalancerRef<'a> {
    pub shared: &'a BalancerSlot,
    pub local: &'a LocalBalancer,
}

impl Generation {
    /// `configured` maps each startup balancer's identity (see above) to the slot it claimed.
    pub fn new(segment: Segment, configured: HashMap<usize, usize>) -> Generation {
        let local = (0..segment.balancer_slots())
            .map(|_| LocalBalancer::default())
            .collect();
        Generation {
            segment,
            local,
            configured,
            discovered: Mutex::new(HashMap::new()),
        }
    }

    pub fn segment(&self) -> &Segment {
        &self.segment
    }

    /// The slot of the balancer whose identity is `id`. A balancer not seen at startup claims a
    /// spare slot by its name key (`key_and_size` gives the key and its member capacity).
    pub fn balancer(
        &self,
        id: usize,
        key_and_size: impl FnOnce() -> (u64, u32),
    ) -> Option<BalancerRef<'_>> {
        let slot = match self.configured.get(&id) {
            Some(&slot) => slot,
            None => {
                let mut discovered = self
                    .discovered
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner);
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
        self.slot(slot)
    }

    /// The balancer in `slot`, if the slot exists.
    pub fn slot(&self, slot: usize) -> Option<BalancerRef<'_>> {
        Some(BalancerRef {
            shared: self.segment.balancer(slot)?,
            local: self.local.get(slot)?,
        })
    }

    /// The slot already given to balancer `id`, without claiming one.
    pub fn known_slot(&self, id: usize) -> Option<usize> {
        self.configured.get(&id).copied().or_else(|| {
            self.discovered
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .get(&id)
                .copied()
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::shm::name_key;

    #[test]
    fn startup_balancers_map_directly_and_newcomers_claim_spares() {
        let seg = Segment::create(3, 12).unwrap();
        let slot = seg.claim_balancer(name_key(b"p1_app"), 4).unwrap();
        let generation = Generation::new(seg, HashMap::from([(0x1000, slot)]));

        let known = generation
            .balancer(0x1000, || unreachable!("configured: no claim"))
            .unwrap();
        assert!(std::ptr::eq(known.shared, seg.balancer(slot).unwrap()));

        let newcomer = generation
            .balancer(0x2000, || (name_key(b"p1_late"), 4))
            .unwrap();
        let late = generation.known_slot(0x2000).unwrap();
        assert_ne!(late, slot);
        assert!(std::ptr::eq(newcomer.shared, seg.balancer(late).unwrap()));
        let again = generation
            .balancer(0x2000, || unreachable!("cached after the claim"))
            .unwrap();
        assert!(std::ptr::eq(again.shared, newcomer.shared));
        assert_eq!(generation.known_slot(0x3000), None);
        unsafe { seg.unmap() };
    }
}
