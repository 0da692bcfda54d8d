//! Unloading: a model stops taking requests at once, finishes what it has,
//! and is dropped with its instances and memory (also how a swapped-out
//! version and an evicted model go).

use std::sync::Arc;
use std::time::{Duration, Instant};

use super::{Lookup, Registry, State, UNLOADED, served_names};
use crate::lifecycle::served::ServedModel;

impl Registry {
    /// Stops serving `name`: new requests get a 404 that says it is
    /// unloaded; requests in flight and queued finish first, then its
    /// instances and memory are freed.
    pub async fn unload(&self, name: &str) -> Result<(), Lookup> {
        // After any load of it in flight: one change of a model at a time.
        let lock = self.model_lock(name);
        let guard = lock.lock().await;
        let result = self.unload_locked(name).await;
        drop(guard);
        self.release_model_lock(name, lock);
        result
    }

    async fn unload_locked(&self, name: &str) -> Result<(), Lookup> {
        let _changing = self.changing.lock().await;
        let old = {
            let mut slots = self.slots.write().unwrap();
            let Some(slot) = slots.get_mut(name) else {
                return Err(Lookup::Unknown {
                    name: name.to_owned(),
                    served: served_names(&slots),
                });
            };
            let Some(old) = slot.served.take() else {
                if slot.registered.is_some() {
                    // Not resident: it must not load at its next request.
                    slot.state = State::Unavailable;
                    slot.reason = UNLOADED.into();
                }
                return Ok(());
            };
            slot.state = State::Unloading;
            slot.reason = format!("unloading: {} requests in flight", old.pool.in_flight());
            old
        };
        tracing::info!(
            "unloading model {name} v{}: it takes no new requests and finishes its {} in flight",
            old.version,
            old.pool.in_flight()
        );
        old.metrics.event(format!(
            "unloading; {} in flight finish first",
            old.pool.in_flight()
        ));
        self.drain(old, true);
        self.update_residency();
        Ok(())
    }

    /// Waits, off the caller's path, until a served model that no longer
    /// takes requests has finished the ones it has; then drops it.
    pub(super) fn drain(&self, old: Arc<ServedModel>, unloading: bool) {
        let slots = Arc::clone(&self.slots);
        tokio::spawn(async move {
            let started = Instant::now();
            while old.pool.in_flight() > 0 {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            let (name, version) = (old.name.clone(), old.version.clone());
            // Its series go, unless the version that replaced it has the
            // same labels and so the same series.
            let mut slots = slots.write().unwrap();
            let slot = slots.get_mut(&name);
            let same_labels = slot
                .as_ref()
                .and_then(|s| s.served.as_ref())
                .is_some_and(|s| s.version == version);
            if !same_labels {
                old.metrics.remove();
            }
            if unloading
                && let Some(slot) = slot
                && slot.served.is_none()
            {
                slot.state = State::Unavailable;
                slot.reason = UNLOADED.into();
            }
            drop(slots);
            tracing::info!(
                "model {name} v{version} drained in {:?}; its instances are freed",
                started.elapsed()
            );
            drop(old);
            crate::pool::release_free_memory();
        });
    }
}
