//! The registry's side of `--load on-demand` (design §11; the why is in
//! [`crate::lifecycle::residency`]): registering models without loading
//! them, making room under the budget by evicting the least recently used,
//! and the residency gauges. A child of the registry's module, so it works
//! on the same slots under the same locks.

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use super::{LoadRequest, Registry, Slot, State, UNLOADED};
use crate::core::error::LoadError;
use crate::core::name::ModelName;
use crate::lifecycle::repository::Found;
use crate::lifecycle::residency::{
    self, Candidate, MAX_REGISTERED, NOT_RESIDENT, Registered, Room,
};
use crate::lifecycle::settings::Settings;

/// How many models are registered and resident, and what the resident
/// ones reserve: the status page's and the gauges' numbers.
#[derive(Debug, Clone, Copy, serde::Serialize)]
pub struct Residency {
    pub registered: usize,
    pub resident: usize,
    pub resident_bytes: u64,
    pub budget_bytes: u64,
}

impl Registry {
    /// Registers every model found without loading any: each answers its
    /// metadata and loads at its first request. Past [`MAX_REGISTERED`],
    /// the rest are refused, each with a log line.
    pub fn register_all(&self, found: Vec<Found>) -> usize {
        let mut count = 0;
        {
            let mut slots = self.slots.write().unwrap();
            for model in found {
                if slots.len() >= MAX_REGISTERED && !slots.contains_key(model.name.as_str()) {
                    tracing::error!(
                        "model {} is not registered: a host registers at most {MAX_REGISTERED} \
                         models",
                        model.name
                    );
                    continue;
                }
                let slot = slots
                    .entry(model.name.to_string())
                    .or_insert_with(|| Slot::empty(State::Ready, ""));
                set_registration(slot, model);
                count += 1;
            }
        }
        self.update_residency();
        count
    }

    /// The poll's: registers a new or changed folder. Returns whether the
    /// model is resident (its caller then reloads it from the new files).
    pub fn register(&self, found: Found) -> bool {
        let resident = {
            let mut slots = self.slots.write().unwrap();
            if slots.len() >= MAX_REGISTERED && !slots.contains_key(found.name.as_str()) {
                tracing::error!(
                    "model {} is not registered: a host registers at most {MAX_REGISTERED} models",
                    found.name
                );
                return false;
            }
            let slot = slots
                .entry(found.name.to_string())
                .or_insert_with(|| Slot::empty(State::Ready, ""));
            set_registration(slot, found);
            slot.served.is_some()
        };
        self.update_residency();
        resident
    }

    /// Forgets a registration (its folder is gone; the caller unloads it
    /// first), and its load and eviction series with it.
    pub fn deregister(&self, name: &str) {
        {
            let mut slots = self.slots.write().unwrap();
            if let Some(slot) = slots.get_mut(name) {
                slot.registered = None;
                if slot.served.is_none() {
                    slots.remove(name);
                }
            }
        }
        self.metrics.loads.forget(name);
        self.update_residency();
    }

    /// A file-backed model loaded under `--load on-demand` (by the API, or
    /// the command line) is registered as it was loaded, so that it may be
    /// evicted and come back, its API settings (a `pinned` parameter) with
    /// it. An uploaded model has no file to come back from: never evicted.
    pub(super) fn keep_registered(
        &self,
        slot: &mut Slot,
        name: &str,
        request: &LoadRequest,
        path: &Path,
    ) {
        let same = slot.registered.as_ref().is_some_and(|r| {
            r.found.path == path
                && r.found.settings == request.settings
                && r.found.version == request.version
        });
        let Ok(name) = ModelName::parse(name) else {
            return;
        };
        if !same {
            slot.registered = Some(Arc::new(Registered::new(Found {
                name,
                version: request.version.clone(),
                path: path.to_owned(),
                settings: request.settings.clone(),
                fingerprint: Vec::new(),
            })));
        }
    }

    /// Makes room for `name` with `settings` under the budget, evicting
    /// the least recently used models that may go; if even that cannot,
    /// evicts nothing and says why, naming the budget.
    pub(super) fn make_room(&self, name: &str, settings: &Settings) -> Result<(), LoadError> {
        let pool = &settings.pool;
        let (count, grows) = super::budget::reserved_instances(settings);
        let wanted = Room {
            memory: (count as u64).saturating_mul(pool.memory_limit as u64),
            instances: count,
        };
        let budget = Room {
            memory: self.budget.memory,
            instances: self.budget.instances,
        };
        let mib = |bytes: u64| bytes >> 20;
        let mut slots = self.slots.write().unwrap();
        let mut candidates: Vec<Candidate> = slots
            .iter()
            .filter(|(n, _)| n.as_str() != name)
            .filter_map(|(n, slot)| {
                let served = slot.served.as_ref()?;
                Some(Candidate {
                    name: n.clone(),
                    last_used: served.last_used.load(Ordering::Relaxed),
                    memory: served.reserved_memory(),
                    instances: served.reserved_instances(),
                    evictable: slot.registered.is_some()
                        && served.given.pinned != Some(true)
                        && served.pool.in_flight() == 0,
                })
            })
            .collect();
        let in_flight = self.reservations_besides(name);
        // Loads in flight hold their room, and cannot be evicted.
        candidates.extend(in_flight.iter().map(|(n, room)| Candidate {
            name: n.clone(),
            last_used: 0,
            memory: room.memory,
            instances: room.instances,
            evictable: false,
        }));
        let held: u64 = candidates.iter().map(|c| c.memory).sum();
        let Some(victims) = residency::victims(&candidates, wanted, budget) else {
            if wanted.memory > budget.memory || wanted.instances > budget.instances {
                return Err(LoadError::OverBudget(format!(
                    "model {name} needs {count} instances × {} MiB = {} MiB{grows}, more than \
                     the whole --memory-budget of {} MiB ({} instances); give it fewer \
                     instances or a lower memory-limit, or raise --memory-budget",
                    mib(pool.memory_limit as u64),
                    mib(wanted.memory),
                    mib(budget.memory),
                    budget.instances
                )));
            }
            let pinned = slots
                .values()
                .filter_map(|s| s.served.as_ref())
                .filter(|s| s.given.pinned == Some(true))
                .count();
            return Err(LoadError::OverBudget(format!(
                "model {name} needs {} MiB{grows}, but the {} MiB --memory-budget is full \
                 ({} MiB held by {} resident models and {} loading, none of which may be \
                 evicted now: {pinned} pinned, the others busy with requests in flight or not \
                 reloadable); retry shortly, or raise --memory-budget",
                mib(wanted.memory),
                mib(budget.memory),
                mib(held),
                candidates.len() - in_flight.len(),
                in_flight.len(),
            )));
        };
        let could_go = candidates.iter().filter(|c| c.evictable).count();
        let mut freed = 0;
        for victim in victims {
            let Some(slot) = slots.get_mut(&victim) else {
                continue;
            };
            let Some(old) = slot.served.take() else {
                continue;
            };
            slot.state = State::Ready;
            slot.reason = NOT_RESIDENT.into();
            freed += old.reserved_memory();
            tracing::info!(
                model = %victim,
                "evicting model {victim} v{}: the least recently used of the {could_go} \
                 resident models that may go (idle, unpinned), to make room for {name}, which \
                 needs {} MiB of the {} MiB --memory-budget ({} MiB held); it stays registered \
                 and loads again at its next request",
                old.version,
                mib(wanted.memory),
                mib(budget.memory),
                mib(held - freed + old.reserved_memory()),
            );
            old.metrics.event(format!(
                "evicted (least recently used) to make room for {name}"
            ));
            self.metrics.loads.evicted(&victim);
            self.drain(old, false);
        }
        Ok(())
    }

    /// Registered and resident models, and what they reserve.
    pub fn residency(&self) -> Residency {
        let slots = self.slots.read().unwrap();
        let mut residency = Residency {
            registered: 0,
            resident: 0,
            resident_bytes: 0,
            budget_bytes: self.budget.memory,
        };
        for slot in slots.values() {
            if let Some(served) = &slot.served {
                residency.resident += 1;
                residency.resident_bytes += served.reserved_memory();
            }
            if slot.served.is_some() || (slot.registered.is_some() && slot.reason != UNLOADED) {
                residency.registered += 1;
            }
        }
        residency
    }

    /// Sets the residency gauges; after every load, eviction and unload.
    pub(super) fn update_residency(&self) {
        let r = self.residency();
        self.metrics.loads.set_residency(
            r.resident_bytes,
            r.budget_bytes,
            r.registered,
            r.resident,
        );
    }
}

/// Makes `slot` a registration of `found`, as not resident unless it is.
fn set_registration(slot: &mut Slot, found: Found) {
    if slot.served.is_none() {
        if slot.reason != UNLOADED {
            slot.state = State::Ready;
            slot.reason = NOT_RESIDENT.into();
        }
        slot.version = found.version.clone().unwrap_or_default();
    }
    slot.registered = Some(Arc::new(Registered::new(found)));
}
