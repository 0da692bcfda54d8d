//! The budget check every load and resize passes: a model's instances ×
//! memory limit must fit beside the others' in `--memory-budget`, and its
//! instances in the pooling allocator's room.

use super::Registry;
use crate::core::error::LoadError;
use crate::lifecycle::served::ServedModel;
use crate::lifecycle::settings::Settings;

impl Registry {
    /// A model's instances × memory limit must fit in what the other models
    /// leave of the budget (a model being replaced does not count: its
    /// memory goes when it drains).
    pub(super) fn check_budget(&self, name: &str, settings: &Settings) -> Result<(), LoadError> {
        let slots = self.slots.read().unwrap();
        let others = slots
            .iter()
            .filter(|(n, _)| n.as_str() != name)
            .filter_map(|(_, s)| s.served.as_ref());
        let (memory, instances) = others.fold((0u64, 0usize), |(m, i), s| {
            (m + s.reserved_memory(), i + s.reserved_instances())
        });
        // Loads in flight hold their room already.
        let (memory, instances) = self
            .reservations_besides(name)
            .iter()
            .fold((memory, instances), |(m, i), (_, room)| {
                (m + room.memory, i + room.instances)
            });
        let pool = &settings.pool;
        let (count, grows) = reserved_instances(settings);
        let wanted = (count as u64).saturating_mul(pool.memory_limit as u64);
        let mib = |bytes: u64| bytes >> 20;
        if memory.saturating_add(wanted) > self.budget.memory {
            return Err(LoadError::OverBudget(format!(
                "model {name} needs {count} instances × {} MiB = {} MiB{grows}, but the models \
                 served hold {} MiB of the {} MiB --memory-budget; unload a model, give this one \
                 fewer instances or a lower memory-limit, or raise --memory-budget",
                mib(pool.memory_limit as u64),
                mib(wanted),
                mib(memory),
                mib(self.budget.memory)
            )));
        }
        if instances.saturating_add(count) > self.budget.instances {
            return Err(LoadError::OverBudget(format!(
                "model {name} needs {count} instances{grows}, but the models served hold \
                 {instances} of the {} this host has room for; unload a model or give this one \
                 fewer instances",
                self.budget.instances
            )));
        }
        Ok(())
    }

    /// Resizes a served model's pool to `wanted` instances if they fit the
    /// budget beside the other models: a resize (the repository API, TTIN)
    /// never overcommits the host.
    pub async fn resize(&self, served: &ServedModel, wanted: usize) -> Result<usize, LoadError> {
        // Not while a load of the same name is in flight: its reservation
        // does not count against its own name, so the two could pass the
        // budget together.
        let lock = self.model_lock(&served.name);
        let guard = lock.lock().await;
        let result = self.resize_locked(served, wanted).await;
        drop(guard);
        self.release_model_lock(&served.name, lock);
        result
    }

    async fn resize_locked(&self, served: &ServedModel, wanted: usize) -> Result<usize, LoadError> {
        let _changing = self.changing.lock().await;
        let mut settings = served.settings.clone();
        if settings.pool.min_instances.is_none() {
            settings.pool.instances = wanted.min(settings.pool.max_instances);
        }
        self.check_budget(&served.name, &settings)?;
        served
            .pool
            .resize(wanted)
            .await
            // Growing the pool boots instances: what fails is the model
            // starting, as in a load.
            .map_err(|err| LoadError::BadFile(crate::runtime::root_cause(&err)))
    }
}

/// How many instances a model's settings reserve, and what to add to a
/// refusal that counts them. An elastic pool may grow to its maximum at any
/// moment: that is what it reserves, so no growth under load passes the
/// budget.
pub(super) fn reserved_instances(settings: &Settings) -> (usize, &'static str) {
    let pool = &settings.pool;
    match pool.min_instances {
        Some(_) => (
            pool.max_instances,
            " (an elastic pool reserves its max-instances)",
        ),
        None => (pool.instances, ""),
    }
}
