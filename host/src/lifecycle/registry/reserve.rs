//! Loads run side by side: the host-wide lock (`changing`) is held only to
//! decide (the budget check, the eviction) and to swap, not for the
//! expensive, model-local part of a load (compile or compile-cache load,
//! instantiate, `metadata()`, booting the pool), so cold requests for
//! different models do not queue behind each other.
//!
//! What keeps the guarantees:
//! - **Budget**: before its first instance (after the compile, which takes
//!   no guest memory, so a file that does not compile evicts nothing), a
//!   load *reserves* its instances × memory limit under `changing`
//!   (evicting to make room if it must). Every budget decision counts the served models *and* the
//!   reservations of loads in flight (which cannot be evicted), so what is
//!   served plus what is being loaded never passes `--memory-budget`. A
//!   reservation is a guard: a load that fails (or whose caller goes away)
//!   drops it and gives the room back; a load that succeeds drops it under
//!   `changing` right after the swap, when its served model counts instead.
//! - **Per model, one change at a time**: loads, reloads and unloads of one
//!   name take that name's lock ([`Registry::model_lock`]) for their whole
//!   length, so an explicit load, a poll's reload and an unload of a model
//!   still happen one after the other; demand loads also keep their single
//!   flight (see [`crate::lifecycle::residency`]).
//! - **No deadlock**: locks are taken in one order, a model's lock before
//!   `changing`, and `changing` is never held while waiting for a model's
//!   lock. A load whose name is not known before it is compiled (a model
//!   that names itself) holds `changing` for its whole length, as every
//!   load used to.

use std::sync::Arc;

use super::Registry;
use crate::core::error::LoadError;
use crate::lifecycle::residency::Room;
use crate::lifecycle::settings::Settings;

/// Room held for a load in flight; given back when dropped.
pub(super) struct Reservation<'a> {
    registry: &'a Registry,
    name: String,
}

impl Drop for Reservation<'_> {
    fn drop(&mut self) {
        self.registry.reserved.lock().unwrap().remove(&self.name);
    }
}

/// What a model with `settings` reserves: instances × memory limit (an
/// elastic pool may grow to its maximum at any moment, so its maximum).
pub(super) fn wanted(settings: &Settings) -> Room {
    let pool = &settings.pool;
    let count = match pool.min_instances {
        Some(_) => pool.max_instances,
        None => pool.instances,
    };
    Room {
        memory: (count as u64).saturating_mul(pool.memory_limit as u64),
        instances: count,
    }
}

impl Registry {
    /// The lock that serialises loads, reloads and unloads of `name`.
    pub(super) fn model_lock(&self, name: &str) -> Arc<tokio::sync::Mutex<()>> {
        let mut locks = self.model_locks.lock().unwrap();
        Arc::clone(locks.entry(name.to_owned()).or_default())
    }

    /// Forgets `name`'s lock once no one holds or waits for it (the caller
    /// has dropped its guard), so the map holds only names in change.
    pub(super) fn release_model_lock(&self, name: &str, lock: Arc<tokio::sync::Mutex<()>>) {
        let mut locks = self.model_locks.lock().unwrap();
        // Clones are made only under this map's lock: two (the map's and
        // the caller's) means no one else has it.
        if Arc::strong_count(&lock) == 2 {
            locks.remove(name);
        }
    }

    /// Reserves room for `name` with `settings` (evicting idle models
    /// under `--load on-demand`), or says why there is none. The caller
    /// holds `changing` and `name`'s lock.
    pub(super) fn reserve(
        &self,
        name: &str,
        settings: &Settings,
    ) -> Result<Reservation<'_>, LoadError> {
        self.fit(name, settings)?;
        self.reserved
            .lock()
            .unwrap()
            .insert(name.to_owned(), wanted(settings));
        Ok(Reservation {
            registry: self,
            name: name.to_owned(),
        })
    }

    /// The budget decision, with `changing` held: evict to make room
    /// (`--load on-demand`) or check that it fits.
    pub(super) fn fit(&self, name: &str, settings: &Settings) -> Result<(), LoadError> {
        if self.on_demand() {
            self.make_room(name, settings)
        } else {
            self.check_budget(name, settings)
        }
    }

    /// What the loads in flight other than `name`'s have reserved.
    pub(super) fn reservations_besides(&self, name: &str) -> Vec<(String, Room)> {
        let reserved = self.reserved.lock().unwrap();
        reserved
            .iter()
            .filter(|(n, _)| n.as_str() != name)
            .map(|(n, room)| (n.clone(), *room))
            .collect()
    }
}
