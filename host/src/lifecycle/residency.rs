//! More models than memory (design §11): with `--load on-demand` every
//! model in the repository is *registered* at start, which costs a registry
//! entry and a file on disk, and is *resident* (compiled, instances booted,
//! its instances × memory limit counted against `--memory-budget`) only
//! from its first request until it is evicted.
//!
//! - **Registration** reads nothing but the folder (what the repository
//!   scan reads anyway): start-up is independent of the number of models.
//! - **Demand load**: a request for a registered model that is not resident
//!   loads it and waits within its queue timeout. Concurrent first requests
//!   make one load (single flight): the first takes the model's flight lock
//!   and loads in a task of its own, so a client that gives up does not
//!   cancel a half-done load; the others wait on the lock and then find the
//!   model resident (or the failure the load just had).
//! - **Eviction**: a load that would pass the budget evicts resident models
//!   that are registered (so they can come back), not pinned, and have
//!   nothing in flight or queued, least recently used first, until it fits.
//!   If that cannot make room, nothing is evicted and the load fails with a
//!   message naming the budget (a 503 with Retry-After to a request).
//!   Loads of different models run side by side, each holding a
//!   reservation of its room that counts as held and cannot be evicted
//!   (see the registry's `reserve`).
//! - **LRU**: each served model keeps the registry's use clock at its last
//!   lookup in one atomic word; the victim is the lowest among the
//!   candidates, found by a scan of the resident models (at most the few
//!   hundred the budget holds), under the same lock that evicts them.
//! - **Metadata without a load**: a model's metadata comes from its guest's
//!   `metadata()`, which needs an instance. It is kept from the model's
//!   first load (and survives its evictions); for a model never loaded, a
//!   metadata or config request compiles it (a compile-cache hit after the
//!   first time) and instantiates it once to ask, without booting a pool or
//!   counting as a load against the budget, and keeps the answer.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};

use crate::core::error::LoadError;
use crate::lifecycle::registry::{Lookup, Registry, State};
use crate::lifecycle::repository::Found;
use crate::lifecycle::served::ServedModel;
use crate::lifecycle::settings::Settings;
use crate::runtime::contract::Metadata;
use crate::telemetry::spans;
use tracing::Instrument;

/// The most models one host registers: the registry's entries and the
/// per-model series of the load metrics are bounded by it.
pub const MAX_REGISTERED: usize = 100_000;

/// The reason a registered model that is not resident shows in the index.
pub const NOT_RESIDENT: &str = "not resident: loads on its next request";

/// Why a model was loaded: the `cause` label of `wasm_host_model_loads_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cause {
    /// A request for a registered model that was not resident.
    Demand,
    /// The repository API (or a HUP reload).
    Explicit,
    /// The repository poll found it new or changed.
    Poll,
    /// Loaded at start (`--load startup`).
    Startup,
}

impl Cause {
    pub fn as_str(self) -> &'static str {
        match self {
            Cause::Demand => "demand",
            Cause::Explicit => "explicit",
            Cause::Poll => "poll",
            Cause::Startup => "startup",
        }
    }
}

/// A model the host can load by itself: its repository folder as last
/// scanned (or as the repository API loaded it), its single-flight lock,
/// and its metadata once known.
pub struct Registered {
    pub found: Found,
    /// Held by the one load in flight for this model; holds the last
    /// attempt's failure, for the requests that waited on it.
    flight: Arc<tokio::sync::Mutex<Option<String>>>,
    /// Loads begun, so a waiter can tell that the failure it finds is of
    /// the attempt it waited for, not an older one.
    attempts: AtomicU64,
    /// The guest's metadata, from the first load or a probe.
    metadata: OnceLock<Metadata>,
}

impl Registered {
    pub fn new(found: Found) -> Registered {
        Registered {
            found,
            flight: Arc::new(tokio::sync::Mutex::new(None)),
            attempts: AtomicU64::new(0),
            metadata: OnceLock::new(),
        }
    }

    /// Whether model.toml (or the load API's parameters) pin it.
    pub fn pinned(&self) -> bool {
        self.found.settings.pinned == Some(true)
    }

    pub fn metadata(&self) -> Option<&Metadata> {
        self.metadata.get()
    }

    pub fn remember(&self, metadata: &Metadata) {
        let _ = self.metadata.set(metadata.clone());
    }

    /// Loads begun so far.
    pub fn attempts(&self) -> u64 {
        self.attempts.load(Ordering::SeqCst)
    }
}

/// What metadata and config answer: a served model's, or a registered
/// one's without loading it.
pub struct Described {
    pub name: String,
    pub version: String,
    pub settings: Settings,
    pub metadata: Metadata,
    /// Instances it has (resident) or would boot (registered).
    pub instances: usize,
    pub resident: bool,
}

impl Described {
    pub fn of(served: &ServedModel) -> Described {
        Described {
            name: served.name.clone(),
            version: served.version.clone(),
            settings: served.settings.clone(),
            metadata: served.model.metadata.clone(),
            instances: served.pool.status().target,
            resident: true,
        }
    }
}

/// A resident model as eviction sees it.
#[derive(Debug, Clone, PartialEq)]
pub struct Candidate {
    pub name: String,
    /// The use clock at its last lookup.
    pub last_used: u64,
    /// What it reserves: instances × memory limit, and instances.
    pub memory: u64,
    pub instances: usize,
    /// Registered (it can load again), not pinned, nothing in flight.
    pub evictable: bool,
}

/// What a load needs beside what is held, and what the budget allows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Room {
    pub memory: u64,
    pub instances: usize,
}

/// The models to evict, least recently used first, for `wanted` to fit
/// beside `held` in `budget`: empty when it fits already, `None` when even
/// every evictable model gone would not make room (then none should go).
pub fn victims(candidates: &[Candidate], wanted: Room, budget: Room) -> Option<Vec<String>> {
    let mut memory: u64 = candidates.iter().map(|c| c.memory).sum();
    let mut instances: usize = candidates.iter().map(|c| c.instances).sum();
    let fits = |memory: u64, instances: usize| {
        memory.saturating_add(wanted.memory) <= budget.memory
            && instances.saturating_add(wanted.instances) <= budget.instances
    };
    let mut order: Vec<&Candidate> = candidates.iter().filter(|c| c.evictable).collect();
    order.sort_by_key(|c| c.last_used);
    let mut chosen = Vec::new();
    for candidate in order {
        if fits(memory, instances) {
            break;
        }
        memory -= candidate.memory;
        instances -= candidate.instances;
        chosen.push(candidate.name.clone());
    }
    fits(memory, instances).then_some(chosen)
}

impl Registry {
    /// A request's model: the served one, or, for a registered model that
    /// is not resident, the one its demand load makes (one load however
    /// many ask at once), waited for within its queue timeout.
    pub async fn resolve(
        self: &Arc<Self>,
        name: &str,
        version: Option<&str>,
    ) -> Result<Arc<ServedModel>, Lookup> {
        match self.get(name, version) {
            Err(Lookup::NotResident { .. }) => {}
            found => return found,
        }
        let Some(registered) = self.registered(name) else {
            return self.get(name, version);
        };
        let wait = registered
            .found
            .settings
            .resolve(self.defaults())
            .map_or(self.defaults().pool.queue_timeout, |s| s.pool.queue_timeout);
        match tokio::time::timeout(wait, self.load_on_demand(&registered, version)).await {
            Ok(result) => result,
            Err(_) => Err(Lookup::Unavailable {
                name: name.to_owned(),
                state: State::Loading,
                reason: format!(
                    "it was not resident and did not load within its queue timeout of \
                     {wait:?}; its load goes on, retry"
                ),
            }),
        }
    }

    /// The single flight: the first request in loads, in a task of its
    /// own; the ones that waited find it served, or its failure.
    async fn load_on_demand(
        self: &Arc<Self>,
        registered: &Arc<Registered>,
        version: Option<&str>,
    ) -> Result<Arc<ServedModel>, Lookup> {
        let name = registered.found.name.to_string();
        let seen = registered.attempts();
        let mut flight = Arc::clone(&registered.flight).lock_owned().await;
        match self.get(&name, version) {
            Err(Lookup::NotResident { .. }) => {}
            found => return found,
        }
        let unavailable = |reason: String| Lookup::Unavailable {
            name: name.clone(),
            state: State::Unavailable,
            reason,
        };
        if registered.attempts() != seen
            && let Some(why) = flight.as_ref()
        {
            return Err(unavailable(why.clone()));
        }
        registered.attempts.fetch_add(1, Ordering::SeqCst);
        let (registry, loading) = (Arc::clone(self), Arc::clone(registered));
        // The load runs in a task of its own, still under the request's
        // span: its trace shows the load it waited for.
        let task = tokio::spawn(
            async move {
                let result = registry.load_registered(&loading, Cause::Demand).await;
                *flight = result.as_ref().err().map(ToString::to_string);
                result
            }
            .instrument(spans::current()),
        );
        match task.await {
            Ok(Ok(_)) => self.get(&name, version),
            Ok(Err(why)) => Err(unavailable(why.to_string())),
            Err(panic) => Err(unavailable(format!("its load failed: {panic}"))),
        }
    }

    /// Loads a registered model from its folder.
    pub async fn load_registered(
        &self,
        registered: &Registered,
        cause: Cause,
    ) -> Result<Arc<ServedModel>, LoadError> {
        let request = registered.found.load_request(self).await?;
        self.load_as(request, cause).await
    }

    /// What metadata and config answer for `name`: the served model's, or
    /// a registered one's without loading it (see the module's doc).
    pub async fn describe(&self, name: &str, version: Option<&str>) -> Result<Described, Lookup> {
        match self.get_quietly(name, version) {
            Err(Lookup::NotResident { .. }) => {}
            found => return found.map(|served| Described::of(&served)),
        }
        let Some(registered) = self.registered(name) else {
            return self.get(name, version).map(|served| Described::of(&served));
        };
        let unavailable = |reason: String| Lookup::Unavailable {
            name: name.to_owned(),
            state: State::Unavailable,
            reason,
        };
        let settings = registered
            .found
            .settings
            .resolve(self.defaults())
            .map_err(|why| unavailable(format!("bad settings: {why}")))?;
        let metadata = match registered.metadata() {
            Some(metadata) => metadata.clone(),
            None => {
                let metadata = self
                    .probe(&registered, settings.pool.memory_limit)
                    .await
                    .map_err(unavailable)?;
                registered.remember(&metadata);
                metadata
            }
        };
        let version = registered
            .found
            .version
            .clone()
            .unwrap_or_else(|| metadata.version.clone());
        let instances = settings
            .pool
            .min_instances
            .unwrap_or(settings.pool.instances);
        Ok(Described {
            name: name.to_owned(),
            version,
            settings,
            metadata,
            instances,
            resident: false,
        })
    }

    /// The metadata of a model never loaded: compiled (or taken from the
    /// compile cache) and instantiated once, no pool, nothing counted.
    async fn probe(
        &self,
        registered: &Registered,
        memory_limit: usize,
    ) -> Result<Metadata, String> {
        let path = &registered.found.path;
        let shown = path.display().to_string();
        let bytes = self.read_model(path).await.map_err(|why| why.to_string())?;
        let code = crate::model::compile(self.engine(), bytes, self.cache(), &shown)
            .await
            .map_err(|err| format!("{err:#}"))?;
        let (_, metadata) = crate::model::prepare(
            self.engine(),
            self.linker(),
            &code.component,
            memory_limit,
            &shown,
        )
        .await
        .map_err(|err| format!("{err:#}"))?;
        Ok(metadata)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn candidate(name: &str, last_used: u64, evictable: bool) -> Candidate {
        Candidate {
            name: name.into(),
            last_used,
            memory: 100,
            instances: 1,
            evictable,
        }
    }

    const ONE: Room = Room {
        memory: 100,
        instances: 1,
    };

    fn budget(models: u64) -> Room {
        Room {
            memory: models * 100,
            instances: 1000,
        }
    }

    #[test]
    fn nothing_goes_while_the_load_fits() {
        let held = [candidate("a", 1, true)];
        assert_eq!(victims(&held, ONE, budget(2)), Some(vec![]));
    }

    #[test]
    fn the_least_recently_used_go_first_and_no_more_than_needed() {
        let held = [
            candidate("a", 7, true),
            candidate("b", 3, true),
            candidate("c", 9, true),
            candidate("d", 5, true),
        ];
        assert_eq!(victims(&held, ONE, budget(4)), Some(vec!["b".into()]));
        let two = Room {
            memory: 200,
            instances: 2,
        };
        assert_eq!(
            victims(&held, two, budget(4)),
            Some(vec!["b".into(), "d".into()])
        );
    }

    #[test]
    fn pinned_and_busy_models_are_never_chosen() {
        let held = [
            candidate("pinned", 1, false),
            candidate("busy", 2, false),
            candidate("idle", 3, true),
        ];
        assert_eq!(victims(&held, ONE, budget(3)), Some(vec!["idle".into()]));
    }

    #[test]
    fn when_nothing_can_make_room_nothing_goes() {
        let held = [candidate("pinned", 1, false), candidate("idle", 2, true)];
        assert_eq!(victims(&held, ONE, budget(1)), None);
        // Too big for the budget even alone: nothing is evicted for it.
        let huge = Room {
            memory: 1000,
            instances: 1,
        };
        assert_eq!(victims(&held, huge, budget(5)), None);
    }

    #[test]
    fn the_instance_budget_counts_as_well_as_memory() {
        let held = [candidate("a", 1, true), candidate("b", 2, true)];
        let room = Room {
            memory: 10_000,
            instances: 2,
        };
        assert_eq!(victims(&held, ONE, room), Some(vec!["a".into()]));
    }
}
