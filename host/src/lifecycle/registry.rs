//! The registry: which models this host serves, by name and version, and
//! the one place models are loaded, swapped and unloaded.
//!
//! It owns what every model shares: the engine (one pooling allocator for
//! the host, sized from its budget), the linker, the compile cache, the
//! metrics registry and the host-wide instance ids. Each name maps to a
//! slot with Triton's states (READY, LOADING, UNLOADING, UNAVAILABLE with a
//! reason) and, when it serves, an `Arc<ServedModel>` that a request takes
//! once and keeps to its end.
//!
//! Loading a name that already serves swaps atomically, Triton's way: the
//! new version compiles and boots beside the old one, takes every request
//! that arrives after the swap, and the old one finishes what it has and is
//! dropped (its instances and memory with it). Loads, reloads and unloads of one
//! name happen one at a time; loads of different names overlap, each
//! reserving its room in the budget before its expensive part (`reserve`).
//!
//! Its parts, in `registry/`: `load` (the one path into service: reserve,
//! compile, boot, swap), `budget` (the check every load and resize
//! passes), `eviction` (`--load on-demand`: registration and least
//! recently used eviction; see [`crate::lifecycle::residency`]), `unload`
//! (unload and drain), `reload` (HUP), `lookup` (why a request found no
//! model), `logs` (what the load log line says).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, RwLock};

use bytes::Bytes;
use wasmtime::Engine;
use wasmtime::component::Linker;

use crate::core::error::LoadError;
use crate::core::metrics::Metrics;
use crate::core::name::ModelName;
use crate::lifecycle::residency::{NOT_RESIDENT, Registered};
use crate::lifecycle::served::ServedModel;
use crate::lifecycle::settings::{ModelSettings, Settings};
use crate::model;
use crate::runtime::cache::CompileCache;
use crate::runtime::sandbox::GuestState;

mod budget;
mod eviction;
mod load;
mod logs;
mod lookup;
mod reload;
mod reserve;
#[cfg(test)]
mod tests;
mod unload;

pub use eviction::Residency;
use load::from_model;
pub use lookup::Lookup;

/// A model's state, as Triton's repository index reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum State {
    Ready,
    Loading,
    Unloading,
    Unavailable,
}

/// One model name: what it serves, and its state.
#[derive(Clone)]
struct Slot {
    served: Option<Arc<ServedModel>>,
    state: State,
    /// Why it is unavailable (or what is loading), empty when ready.
    reason: String,
    version: String,
    /// With `--load on-demand`: the folder it loads from by itself, so it
    /// may be evicted and load again at its next request.
    registered: Option<Arc<Registered>>,
}

impl Slot {
    fn empty(state: State, version: &str) -> Slot {
        Slot {
            served: None,
            state,
            reason: String::new(),
            version: version.to_owned(),
            registered: None,
        }
    }
}

/// One line of the repository index.
#[derive(Debug, Clone, serde::Serialize)]
pub struct IndexEntry {
    pub name: String,
    pub version: String,
    pub state: State,
    pub reason: String,
    /// Loaded now (always, but for a model `--load on-demand` registered
    /// and has not loaded, or evicted).
    pub resident: bool,
}

/// What the host may hold across all models: a model whose instances ×
/// memory limit would pass it is refused.
#[derive(Debug, Clone, Copy)]
pub struct Budget {
    /// Bytes of linear memory, summed over every model's instances × cap.
    pub memory: u64,
    /// Instances the engine's pooling allocator has slots for (a few are
    /// kept back for replacements in flight).
    pub instances: usize,
    /// The largest memory limit a model may have: the engine's memory layout
    /// reserves no more per instance (4 GiB, or less on a small address space).
    pub memory_cap: u64,
}

/// A model to load: its bytes, where they came from, and what to call it.
pub struct LoadRequest {
    /// The name to serve it under; `None` takes the model's own.
    pub name: Option<ModelName>,
    /// The version to report; `None` takes the model's own.
    pub version: Option<String>,
    /// The component (shared, not copied, on its way to the compiler).
    pub bytes: Bytes,
    /// The file it was read from, for logs and reloads; `None` if uploaded.
    pub path: Option<PathBuf>,
    pub settings: ModelSettings,
    /// A model this one takes the place of under another name (a file that
    /// now holds a model with a new name): it stops taking requests at the
    /// same instant the new one starts.
    pub replaces: Option<String>,
}

pub struct Registry {
    engine: Engine,
    linker: Linker<GuestState>,
    cache: CompileCache,
    metrics: Arc<Metrics>,
    /// The host's flags: what a model's unset settings become.
    defaults: Settings,
    budget: Budget,
    /// Host-wide instance ids, never reused.
    ids: Arc<AtomicU64>,
    /// Shared with drain tasks, which settle a slot once its old version
    /// has finished.
    slots: Arc<RwLock<BTreeMap<String, Slot>>>,
    /// Held to decide (budget, eviction) and to swap; see `reserve` for
    /// why not for a whole load.
    changing: tokio::sync::Mutex<()>,
    /// Per model name: serialises its loads, reloads and unloads.
    model_locks: std::sync::Mutex<std::collections::HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
    /// The room reserved by loads in flight, by name.
    reserved: std::sync::Mutex<BTreeMap<String, crate::lifecycle::residency::Room>>,
    /// Names whose slots never served, oldest first: a failed load under a
    /// fresh name leaves an UNAVAILABLE entry (so the index says why), and
    /// past [`MAX_NEVER_SERVED`] of them the oldest go, so a client that
    /// fails loads under ever new names cannot grow the index for ever.
    never_served: std::sync::Mutex<std::collections::VecDeque<String>>,
    /// `--load on-demand`: loads evict least recently used models to fit.
    on_demand: AtomicBool,
    /// Counts lookups: a served model's `last_used` is its value then.
    clock: AtomicU64,
}

/// The most index entries kept for names that failed to load and never
/// served.
pub const MAX_NEVER_SERVED: usize = 256;

impl Registry {
    pub fn new(
        engine: Engine,
        linker: Linker<GuestState>,
        cache: CompileCache,
        defaults: Settings,
        budget: Budget,
    ) -> Arc<Registry> {
        Arc::new(Registry {
            engine,
            linker,
            cache,
            metrics: Arc::new(Metrics::new()),
            defaults,
            budget,
            ids: Arc::new(AtomicU64::new(1)),
            slots: Arc::new(RwLock::new(BTreeMap::new())),
            changing: tokio::sync::Mutex::new(()),
            model_locks: std::sync::Mutex::new(std::collections::HashMap::new()),
            reserved: std::sync::Mutex::new(BTreeMap::new()),
            never_served: std::sync::Mutex::new(std::collections::VecDeque::new()),
            on_demand: AtomicBool::new(false),
            clock: AtomicU64::new(0),
        })
    }

    /// `--load on-demand`: a load that would pass the budget evicts the
    /// least recently used idle models instead of failing.
    pub fn enable_on_demand(&self) {
        self.on_demand.store(true, Ordering::SeqCst);
        self.update_residency();
    }

    pub fn on_demand(&self) -> bool {
        self.on_demand.load(Ordering::SeqCst)
    }

    pub(crate) fn engine(&self) -> &Engine {
        &self.engine
    }

    pub(crate) fn linker(&self) -> &Linker<GuestState> {
        &self.linker
    }

    pub(crate) fn cache(&self) -> &CompileCache {
        &self.cache
    }

    pub fn metrics(&self) -> &Metrics {
        &self.metrics
    }

    /// The metrics registry, for tasks that outlive a borrow of this one.
    pub fn shared_metrics(&self) -> Arc<Metrics> {
        Arc::clone(&self.metrics)
    }

    /// A model file's component: read as it is, or, for an `.onnx` file,
    /// packed on the fly (and cached by content hash).
    pub async fn read_model(&self, path: &Path) -> Result<Bytes, LoadError> {
        let read = if crate::model::pack::is_onnx(path) {
            let limit = self.defaults.pool.memory_limit;
            crate::model::pack::packed_for_serving(&self.engine, path, limit, &self.cache).await
        } else {
            model::read(path).await
        };
        read.map(Bytes::from).map_err(|err| from_model(&err))
    }

    /// The host's flags, as settings.
    pub fn defaults(&self) -> &Settings {
        &self.defaults
    }

    pub fn budget(&self) -> Budget {
        self.budget
    }

    /// The served model for a request: by name, and by version when the
    /// path names one.
    pub fn get(&self, name: &str, version: Option<&str>) -> Result<Arc<ServedModel>, Lookup> {
        let served = self.get_quietly(name, version)?;
        let now = self.clock.fetch_add(1, Ordering::Relaxed) + 1;
        served.last_used.store(now, Ordering::Relaxed);
        Ok(served)
    }

    /// [`Registry::get`] without counting as a use: what reads about a
    /// model (its metadata, the index) does not keep it resident.
    pub fn get_quietly(
        &self,
        name: &str,
        version: Option<&str>,
    ) -> Result<Arc<ServedModel>, Lookup> {
        let slots = self.slots.read().unwrap();
        let Some(slot) = slots.get(name) else {
            return Err(Lookup::Unknown {
                name: name.to_owned(),
                served: served_names(&slots),
            });
        };
        match &slot.served {
            Some(served) => match version {
                Some(wanted) if wanted != served.version => Err(Lookup::Version {
                    name: name.to_owned(),
                    wanted: wanted.to_owned(),
                    served: served.version.clone(),
                }),
                _ => Ok(Arc::clone(served)),
            },
            // Unloading takes no new requests either: the model is gone
            // for clients from the moment the unload was asked for.
            None if slot.reason == UNLOADED || slot.state == State::Unloading => {
                Err(Lookup::Unloaded {
                    name: name.to_owned(),
                })
            }
            None if slot.registered.is_some() => match version {
                Some(wanted) if !slot.version.is_empty() && wanted != slot.version => {
                    Err(Lookup::Version {
                        name: name.to_owned(),
                        wanted: wanted.to_owned(),
                        served: slot.version.clone(),
                    })
                }
                _ => Err(Lookup::NotResident {
                    name: name.to_owned(),
                }),
            },
            None => Err(Lookup::Unavailable {
                name: name.to_owned(),
                state: slot.state,
                reason: slot.reason.clone(),
            }),
        }
    }

    /// The only model served, for `/predict`; `None` if there are more or none.
    pub fn only(&self) -> Result<Arc<ServedModel>, Vec<String>> {
        let slots = self.slots.read().unwrap();
        let mut served = slots.values().filter_map(|s| s.served.as_ref());
        match (served.next(), served.next()) {
            (Some(one), None) => Ok(Arc::clone(one)),
            _ => Err(served_names(&slots)),
        }
    }

    /// Every model serving now, by name.
    pub fn served(&self) -> Vec<Arc<ServedModel>> {
        let slots = self.slots.read().unwrap();
        slots.values().filter_map(|s| s.served.clone()).collect()
    }

    /// Triton's repository index: every model the host knows, with its state.
    pub fn index(&self) -> Vec<IndexEntry> {
        let slots = self.slots.read().unwrap();
        slots
            .iter()
            .map(|(name, slot)| IndexEntry {
                name: name.clone(),
                version: slot.version.clone(),
                state: slot.state,
                reason: slot.reason.clone(),
                resident: slot.served.is_some(),
            })
            .collect()
    }

    /// The registration of `name`, if `--load on-demand` registered it.
    pub fn registered(&self, name: &str) -> Option<Arc<Registered>> {
        let slots = self.slots.read().unwrap();
        slots.get(name)?.registered.clone()
    }

    /// Records that `name` could not be loaded (a bad file, a trap in
    /// `metadata`, over the budget): UNAVAILABLE with the reason, unless an
    /// older version still serves, which keeps serving.
    pub fn failed(&self, name: &str, version: &str, reason: &str) {
        let mut slots = self.slots.write().unwrap();
        let slot = slots
            .entry(name.to_owned())
            .or_insert_with(|| Slot::empty(State::Unavailable, version));
        if slot.registered.is_some() {
            // A registered model stays registered: its next request tries
            // again (a failed demand load is that request's 503).
            if slot.served.is_none() && slot.reason != UNLOADED {
                slot.state = State::Ready;
                slot.reason = NOT_RESIDENT.into();
            }
            return;
        }
        if slot.served.is_none() {
            slot.state = State::Unavailable;
            slot.reason = reason.to_owned();
            slot.version = version.to_owned();
        }
        if slot.served.is_some() || slot.reason == UNLOADED {
            return;
        }
        let mut never_served = self.never_served.lock().unwrap();
        if !never_served.iter().any(|n| n == name) {
            never_served.push_back(name.to_owned());
        }
        while never_served.len() > MAX_NEVER_SERVED {
            let Some(oldest) = never_served.pop_front() else {
                break;
            };
            if slots
                .get(&oldest)
                .is_some_and(|s| s.served.is_none() && s.state == State::Unavailable)
            {
                slots.remove(&oldest);
            }
        }
    }
}

/// The reason an unloaded model's slot keeps.
pub(crate) const UNLOADED: &str = "unloaded";

fn served_names(slots: &BTreeMap<String, Slot>) -> Vec<String> {
    slots
        .iter()
        .filter(|(_, s)| s.served.is_some())
        .map(|(n, _)| n.clone())
        .collect()
}
