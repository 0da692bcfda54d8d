//! Loading: the one path every model takes into service, whatever asked
//! for it (start, the repository API, a poll, HUP, a first request on
//! demand). One load of a name at a time; it reserves its room in the budget,
//! reads and compiles the component (or takes it from the compile cache),
//! boots its pool, and swaps it in atomically beside the version it
//! replaces.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use tracing::Instrument;

use super::logs::{describe, describe_batching, describe_pool, out_of_memory_hint};
use super::{LoadRequest, Registry, Slot, State};
use crate::core::error::LoadError;
use crate::core::name::ModelName;
use crate::core::scheduler::Scheduler;
use crate::lifecycle::residency::Cause;
use crate::lifecycle::served::{ServedModel, Source};
use crate::model::{self, Model};
use crate::pool::{ModelBoot, Pool};
use crate::telemetry::spans;

impl Registry {
    fn set_loading(&self, name: &str) {
        let mut slots = self.slots.write().unwrap();
        let slot = slots
            .entry(name.to_owned())
            .or_insert_with(|| Slot::empty(State::Loading, ""));
        if slot.served.is_none() {
            slot.state = State::Loading;
            slot.reason = "loading".into();
        }
    }

    /// Loads a model and serves it, swapping out the version it replaces.
    /// On failure nothing changes but the slot's reason; the error says why,
    /// in one line for the operator.
    pub async fn load(&self, request: LoadRequest) -> Result<Arc<ServedModel>, LoadError> {
        self.load_as(request, Cause::Explicit).await
    }

    /// [`Registry::load`], counted in `wasm_host_model_loads_total` under
    /// `cause`.
    pub async fn load_as(
        &self,
        request: LoadRequest,
        cause: Cause,
    ) -> Result<Arc<ServedModel>, LoadError> {
        let span = spans::model_load(
            request.name.as_deref().unwrap_or(""),
            request.version.as_deref().unwrap_or(""),
            cause.as_str(),
        );
        let loaded = self
            .load_under_locks(request, cause)
            .instrument(span.clone())
            .await;
        // A model that names itself is known by name only now.
        if let Ok(served) = &loaded {
            span.record("model.name", served.name.as_str());
            span.record("model.version", served.version.as_str());
        }
        loaded
    }

    /// [`Registry::load_as`] under the model's lock (or `changing`, for a
    /// model that names itself).
    async fn load_under_locks(
        &self,
        request: LoadRequest,
        cause: Cause,
    ) -> Result<Arc<ServedModel>, LoadError> {
        let started = Instant::now();
        match request.name.as_deref() {
            Some(name) => {
                let lock = self.model_lock(name);
                let guard = lock.lock().await;
                self.set_loading(name);
                let result = self.load_locked(&request, Some(name)).await;
                self.loaded(&request, cause, started, &result);
                drop(guard);
                self.release_model_lock(name, lock);
                result
            }
            None => {
                let _changing = self.changing.lock().await;
                let result = self.load_locked(&request, None).await;
                self.loaded(&request, cause, started, &result);
                result
            }
        }
    }

    /// After a load, under the same locks: its metric, or its failure in
    /// the slot; the residency gauges.
    fn loaded(
        &self,
        request: &LoadRequest,
        cause: Cause,
        started: Instant,
        result: &Result<Arc<ServedModel>, LoadError>,
    ) {
        match result {
            Ok(served) => {
                let seconds = started.elapsed().as_secs_f64();
                self.metrics
                    .loads
                    .loaded(&served.name, cause.as_str(), seconds);
            }
            Err(reason) => {
                if let Some(name) = &request.name {
                    let version = request.version.as_deref().unwrap_or("");
                    self.failed(name, version, reason.message());
                }
            }
        }
        self.update_residency();
    }

    /// With `named` (the caller holds its lock): reserves the room under
    /// `changing`, loads without it, and takes it again to swap. Without
    /// (a model that names itself): the caller holds `changing` throughout.
    async fn load_locked(
        &self,
        request: &LoadRequest,
        named: Option<&str>,
    ) -> Result<Arc<ServedModel>, LoadError> {
        let started = Instant::now();
        let shown = match &request.path {
            Some(path) => path.display().to_string(),
            None => format!(
                "the uploaded model {}",
                request.name.as_deref().unwrap_or("")
            ),
        };
        tracing::info!("loading {shown}");
        let settings = request
            .settings
            .resolve(&self.defaults)
            .map_err(|why| LoadError::BadFile(format!("{shown}: bad settings: {why}")))?;
        if settings.pool.memory_limit as u64 > self.budget.memory_cap {
            return Err(LoadError::Unsupported(format!(
                "{shown}: memory-limit {} MiB is more than the {} MiB this host reserves per \
                 instance (its memory layout is sized to --memory-limit where the address space \
                 is small, and on aarch64): start the host with --memory-limit {}MiB or more",
                settings.pool.memory_limit >> 20,
                self.budget.memory_cap >> 20,
                settings.pool.memory_limit >> 20
            )));
        }
        let file_size = request.bytes.len();
        let model::Code {
            component,
            compiled,
            sha256: digest,
        } = model::compile(&self.engine, request.bytes.clone(), &self.cache, &shown)
            .await
            .map_err(|err| from_model(&err))?;
        // Room is reserved before the first instance (`metadata()`), after
        // the compile, which takes no guest memory: a file that does not
        // compile evicts nothing.
        let reservation = match named {
            Some(name) => {
                let _changing = self.changing.lock().await;
                Some(self.reserve(name, &settings)?)
            }
            None => None,
        };
        let (pre, metadata) = model::prepare(
            &self.engine,
            &self.linker,
            &component,
            settings.pool.memory_limit,
            &shown,
        )
        .await
        .map_err(|err| from_model(&err))?;
        let name = request
            .name
            .clone()
            .map_or_else(|| metadata.name.clone(), ModelName::into_string);
        let version = request.version.clone().unwrap_or(metadata.version.clone());
        if reservation.is_none() {
            self.fit(&name, &settings)?;
        }
        let scheduler = Scheduler::new(&metadata, settings.batching.as_ref())
            .map_err(|why| LoadError::BadFile(format!("{shown}: {why}")))?;

        let model = Arc::new(Model {
            path: request.path.clone().unwrap_or_default(),
            metadata,
            pre,
            file_size,
            compiled,
        });
        let metrics = self
            .metrics
            .for_model(&name, &version, settings.batching.is_some());
        let boot = ModelBoot {
            engine: self.engine.clone(),
            model: Arc::clone(&model),
            memory_limit: settings.pool.memory_limit,
        };
        let pool = Pool::start(
            boot,
            settings.pool.clone(),
            metrics.clone(),
            Arc::clone(&self.ids),
        )
        .await
        .map_err(|err| {
            // The model's own start (a trap as it boots) as often as the
            // host's memory: a bad file, 400, as a failed load always was.
            LoadError::BadFile(format!(
                "{shown} failed to start: {} ({})",
                crate::runtime::root_cause(&err),
                out_of_memory_hint()
            ))
        })?;
        let source = match &request.path {
            Some(path) => Source::File {
                path: path.clone(),
                digest,
            },
            None => Source::Uploaded { digest },
        };
        let served = Arc::new(ServedModel {
            name: name.clone(),
            version: version.clone(),
            settings,
            given: request.settings.clone(),
            model,
            pool,
            scheduler,
            metrics,
            source,
            loaded_at: Instant::now(),
            last_used: AtomicU64::new(self.clock.fetch_add(1, Ordering::Relaxed) + 1),
        });
        let meta = &served.model.metadata;
        tracing::info!(
            model = %name,
            "loaded model {name} v{version} from {shown} ({} KiB), {}; {}{}, memory limit \
             {} MiB, timeout {:?}; inputs: {}; outputs: {}; ready in {:?}",
            file_size / 1024,
            served.model.compiled,
            describe_pool(&served.settings.pool),
            describe_batching(served.settings.batching.as_ref()),
            served.settings.pool.memory_limit >> 20,
            served.settings.timeout,
            describe(&meta.inputs),
            describe(&meta.outputs),
            started.elapsed()
        );
        // A named load swaps under `changing`, and gives its reservation
        // back there, once its served model counts in its place.
        let _changing = match named {
            Some(_) => Some(self.changing.lock().await),
            None => None,
        };
        let old = {
            let mut slots = self.slots.write().unwrap();
            let slot = slots
                .entry(name.clone())
                .or_insert_with(|| Slot::empty(State::Ready, &version));
            if self.on_demand()
                && let Some(path) = &request.path
            {
                self.keep_registered(slot, &name, request, path);
            }
            if let Some(registered) = &slot.registered {
                registered.remember(&served.model.metadata);
            }
            slot.state = State::Ready;
            slot.reason.clear();
            slot.version = version;
            let old = slot.served.replace(Arc::clone(&served));
            let superseded = request
                .replaces
                .as_ref()
                .filter(|old_name| **old_name != name)
                .and_then(|old_name| slots.remove(old_name))
                .and_then(|slot| slot.served);
            if let Some(superseded) = superseded {
                tracing::warn!(
                    "model {} is replaced by {name}: clients must use /v2/models/{name}/...",
                    superseded.name
                );
                self.drain(superseded, false);
            }
            old
        };
        drop(reservation);
        if let Some(old) = old {
            tracing::info!(
                "model {name}: v{} takes new requests; v{} finishes its {} in flight and goes",
                served.version,
                old.version,
                old.pool.in_flight()
            );
            served.metrics.event(format!(
                "v{} replaced v{} ({} in flight finish on v{})",
                served.version,
                old.version,
                old.pool.in_flight(),
                old.version
            ));
            self.drain(old, false);
        } else {
            served.metrics.event(format!(
                "loaded with {} instances",
                served.settings.pool.instances
            ));
        }
        Ok(served)
    }
}

/// A failure from `model/` as a load error: of the variant `model/` typed
/// it with (an unsupported artifact, a missing file), else a bad file; its
/// text the whole chain, as loads always said it.
pub(crate) fn from_model(err: &anyhow::Error) -> LoadError {
    let text = format!("{err:#}");
    match err.downcast_ref::<LoadError>() {
        Some(typed) => typed.clone().map(|_| text),
        None => LoadError::BadFile(text),
    }
}
