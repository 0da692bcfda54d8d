//! The pool hands each request a free instance, or makes it wait its turn.
//!
//! Free instances sit in a stack (the most recently used on top, its caches
//! warm); a fair semaphore counts them, so waiting requests are served in
//! arrival order and no two requests ever race for the same instance. A
//! request holds its instance through a [`Lease`], which gives it back when
//! dropped, even when the request's future is dropped half-way (a client that
//! disconnects): an instance whose state is unknown is then replaced rather
//! than returned, so the pool never loses a slot.
//!
//! The pool also owns the instances' life cycle: replacing faulted ones,
//! recycling after `--max-requests`, growing and shrinking (TTIN/TTOU), and
//! swapping in a reloaded model (HUP) while requests keep flowing.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use tokio::sync::Semaphore;
use wasmtime::Engine;
use wasmtime::component::Linker;

use crate::cache::CompileCache;
use crate::contract::Tensor;
use crate::error::ApiError;
use crate::instance::{Fault, Instance, InstanceId};
use crate::metrics::Metrics;
use crate::model::Model;
use crate::sandbox::GuestState;

/// The limits a pool enforces.
#[derive(Debug, Clone)]
pub struct PoolConfig {
    pub instances: usize,
    /// Most instances TTIN may grow the pool to.
    pub max_instances: usize,
    pub memory_limit: usize,
    /// Longest a request may wait for a free instance before it gets a 503.
    pub queue_timeout: Duration,
    /// Most requests that may wait at once; past it, 503 at once.
    pub max_queue: usize,
    /// Recycle an instance after this many requests (gunicorn's `max_requests`).
    pub max_requests: Option<u64>,
    /// Up to this many more requests, chosen per instance, so that instances
    /// started together do not all recycle together.
    pub max_requests_jitter: u64,
}

pub struct Pool {
    engine: Engine,
    linker: Linker<GuestState>,
    cache: CompileCache,
    metrics: Arc<Metrics>,
    /// The model new instances are made from; replaced by a reload.
    model: RwLock<Arc<Model>>,
    config: PoolConfig,
    /// How many instances the pool should have (TTIN/TTOU move it).
    target: AtomicUsize,
    idle: Mutex<Vec<Instance>>,
    /// One permit per idle instance; tokio's semaphore is FIFO-fair.
    free: Semaphore,
    queued: AtomicUsize,
    busy: AtomicUsize,
    /// Instances of the current model alive: idle, busy, or being replaced.
    /// Instances of a model replaced by a reload no longer count.
    total: AtomicUsize,
    replaced: AtomicU64,
    /// Instances of the current model that failed to boot as replacements
    /// and are being retried: the pool's shortfall, shown in `/health`,
    /// readiness and metrics.
    missing: AtomicUsize,
    /// Guest calls made, whatever their outcome.
    calls: AtomicU64,
    next_id: AtomicU64,
    /// Serialises reloads and resizes.
    reshaping: tokio::sync::Mutex<()>,
}

/// What `/health` reports.
#[derive(Debug, Clone, Copy, serde::Serialize)]
pub struct Status {
    pub total: usize,
    pub target: usize,
    pub busy: usize,
    pub idle: usize,
    pub queued: usize,
    pub replaced: u64,
    pub missing: usize,
    pub calls: u64,
}

impl Pool {
    /// Boots `config.instances` instances, logging each as gunicorn logs its
    /// workers.
    pub async fn start(
        engine: Engine,
        linker: Linker<GuestState>,
        cache: CompileCache,
        metrics: Arc<Metrics>,
        model: Arc<Model>,
        config: PoolConfig,
    ) -> wasmtime::Result<Arc<Pool>> {
        let pool = Arc::new(Pool {
            engine,
            linker,
            cache,
            metrics,
            model: RwLock::new(model),
            target: AtomicUsize::new(config.instances),
            idle: Mutex::new(Vec::with_capacity(config.max_instances)),
            free: Semaphore::new(0),
            queued: AtomicUsize::new(0),
            busy: AtomicUsize::new(0),
            total: AtomicUsize::new(0),
            replaced: AtomicU64::new(0),
            missing: AtomicUsize::new(0),
            calls: AtomicU64::new(0),
            next_id: AtomicU64::new(1),
            reshaping: tokio::sync::Mutex::new(()),
            config,
        });
        for _ in 0..pool.config.instances {
            pool.add_instance().await?;
        }
        Ok(pool)
    }

    /// The current model. A request decodes against it, and re-checks against
    /// its instance's model if a reload happened in between.
    pub fn model(&self) -> Arc<Model> {
        Arc::clone(&self.model.read().unwrap())
    }

    pub fn metrics(&self) -> &Metrics {
        &self.metrics
    }

    pub fn max_queue(&self) -> usize {
        self.config.max_queue
    }

    pub fn status(&self) -> Status {
        Status {
            total: self.total.load(Ordering::SeqCst),
            target: self.target.load(Ordering::SeqCst),
            busy: self.busy.load(Ordering::SeqCst),
            idle: self.free.available_permits(),
            queued: self.queued.load(Ordering::SeqCst),
            replaced: self.replaced.load(Ordering::SeqCst),
            missing: self.missing.load(Ordering::SeqCst),
            calls: self.calls.load(Ordering::SeqCst),
        }
    }

    /// Every wanted instance is up and the queue has room.
    pub fn ready(&self) -> bool {
        let status = self.status();
        status.total >= status.target && status.queued < self.config.max_queue
    }

    async fn new_instance(&self, model: Arc<Model>) -> wasmtime::Result<Instance> {
        let id = self.next_id.fetch_add(1, Ordering::SeqCst);
        let recycle_after = self
            .config
            .max_requests
            .map(|n| n + jitter(id, self.config.max_requests_jitter));
        Instance::new(
            &self.engine,
            model,
            id,
            self.config.memory_limit,
            recycle_after,
        )
        .await
    }

    /// Boots one more instance of the current model and makes it available.
    async fn add_instance(&self) -> wasmtime::Result<InstanceId> {
        let started = Instant::now();
        let instance = self.new_instance(self.model()).await?;
        let id = instance.id;
        tracing::info!(
            instance = id,
            "booted instance {id} in {:?}",
            started.elapsed()
        );
        self.total.fetch_add(1, Ordering::SeqCst);
        self.metrics.instance_memory(id, instance.memory_in_use());
        self.give_back(instance);
        Ok(id)
    }

    fn is_current(&self, instance: &Instance) -> bool {
        Arc::ptr_eq(&instance.model, &self.model.read().unwrap())
    }

    /// Waits for a free instance: at once if one is idle, else in FIFO order
    /// behind the other waiting requests, within the queue's bounds.
    pub async fn acquire(self: &Arc<Self>) -> Result<Lease, ApiError> {
        let arrived = Instant::now();
        loop {
            let permit = match self.free.try_acquire() {
                Ok(permit) => permit,
                Err(_) => {
                    let _waiting = QueueSlot::take(self)?;
                    let wait = tokio::time::timeout(self.config.queue_timeout, self.free.acquire());
                    match wait.await {
                        Ok(permit) => permit.expect("the pool's semaphore is never closed"),
                        Err(_) => {
                            return Err(ApiError::unavailable(format!(
                                "no instance became free within {:?}; retry later, or start the \
                                 host with more --instances or a longer --queue-timeout",
                                self.config.queue_timeout
                            )));
                        }
                    }
                }
            };
            permit.forget();
            let instance = self
                .idle
                .lock()
                .unwrap()
                .pop()
                .expect("a permit always has an idle instance behind it");
            if !self.is_current(&instance) {
                // Left over from before a reload: it serves no more requests.
                self.retire(instance, "the model was reloaded");
                continue;
            }
            self.busy.fetch_add(1, Ordering::SeqCst);
            self.metrics.queued(arrived.elapsed());
            return Ok(Lease {
                pool: Arc::clone(self),
                instance: Some(instance),
                replace_because: None,
            });
        }
    }

    fn give_back(&self, instance: Instance) {
        self.idle.lock().unwrap().push(instance);
        self.free.add_permits(1);
    }

    /// Drops an instance for good.
    fn retire(&self, instance: Instance, why: &str) {
        if self.is_current(&instance) {
            self.total.fetch_sub(1, Ordering::SeqCst);
        }
        self.metrics.instance_gone(instance.id);
        tracing::info!(
            instance = instance.id,
            "retired instance {}: {why}",
            instance.id
        );
    }

    /// Throws an instance away and boots a new one of the same model in its
    /// place, off the request's path. (After a reload, an instance of the
    /// old model is only retired: the reload booted a full set already.)
    fn replace(self: &Arc<Self>, old: Instance, kind: &'static str, cause: String) {
        if !self.is_current(&old) {
            return self.retire(old, &cause);
        }
        self.metrics.replaced(kind);
        self.metrics.instance_gone(old.id);
        let pool = Arc::clone(self);
        tokio::spawn(async move {
            let (old_id, model) = (old.id, Arc::clone(&old.model));
            // Drop first: the pooling allocator's slot is then free for the
            // replacement.
            drop(old);
            let started = Instant::now();
            let mut missing = false;
            let boot = || pool.new_instance(Arc::clone(&model));
            let booted = retry_with_backoff(boot, |err, delay| {
                pool.metrics.boot_failed();
                if !Arc::ptr_eq(&model, &pool.model()) {
                    // A reload booted a full set of the new model; this
                    // one is no longer wanted.
                    return false;
                }
                if !missing {
                    missing = true;
                    pool.total.fetch_sub(1, Ordering::SeqCst);
                    pool.missing.fetch_add(1, Ordering::SeqCst);
                }
                tracing::error!(
                    old = old_id,
                    "could not replace instance {old_id} ({cause}): {}; \
                     retrying in {delay:?}, one instance short until then",
                    crate::model::root_cause(err)
                );
                true
            })
            .await;
            if missing {
                pool.missing.fetch_sub(1, Ordering::SeqCst);
            }
            let Some(new) = booted else {
                return;
            };
            if !Arc::ptr_eq(&model, &pool.model()) {
                return pool.retire(new, "the model was reloaded");
            }
            if missing {
                pool.total.fetch_add(1, Ordering::SeqCst);
            }
            pool.replaced.fetch_add(1, Ordering::SeqCst);
            tracing::warn!(
                old = old_id,
                new = new.id,
                "replaced instance {old_id} with {} in {:?}: {cause}",
                new.id,
                started.elapsed()
            );
            pool.metrics.instance_memory(new.id, new.memory_in_use());
            pool.give_back(new);
        });
    }

    /// Where a returning instance goes: back to the pool, replaced, or retired.
    fn take_back(self: &Arc<Self>, instance: Instance, fault: Option<(&'static str, String)>) {
        self.busy.fetch_sub(1, Ordering::SeqCst);
        if !self.is_current(&instance) {
            self.retire(instance, "the model was reloaded");
        } else if let Some((kind, cause)) = fault {
            self.replace(instance, kind, cause);
        } else if self.total.load(Ordering::SeqCst) > self.target.load(Ordering::SeqCst) {
            self.retire(instance, "the pool was shrunk (TTOU)");
        } else if instance.recycle_due() {
            let cause = format!(
                "recycled after {} requests (--max-requests)",
                instance.served
            );
            self.replace(instance, "recycled", cause);
        } else {
            self.metrics
                .instance_memory(instance.id, instance.memory_in_use());
            self.give_back(instance);
        }
    }

    /// Removes idle instances that `unwanted` picks, for as long as there are
    /// any: each removal takes a permit, so the semaphore and the stack stay
    /// in step. Busy ones are handled when they come back.
    fn remove_idle(&self, unwanted: impl Fn(&Pool, &Instance) -> bool, why: &str) {
        while let Ok(permit) = self.free.try_acquire() {
            let mut idle = self.idle.lock().unwrap();
            let Some(index) = idle.iter().position(|i| unwanted(self, i)) else {
                drop(idle);
                drop(permit);
                return;
            };
            let instance = idle.remove(index);
            drop(idle);
            permit.forget();
            self.retire(instance, why);
        }
    }

    /// TTIN: one more instance, up to the pool's capacity.
    pub async fn grow(&self) {
        let _reshaping = self.reshaping.lock().await;
        let target = self.target.load(Ordering::SeqCst);
        if target >= self.config.max_instances {
            tracing::warn!(
                "TTIN ignored: already at {target} instances, the most this pool was sized for"
            );
            return;
        }
        self.target.store(target + 1, Ordering::SeqCst);
        match self.add_instance().await {
            Ok(id) => tracing::info!("TTIN: added instance {id}; {} instances", target + 1),
            Err(err) => {
                self.target.store(target, Ordering::SeqCst);
                tracing::error!("TTIN failed: {}", crate::model::root_cause(&err));
            }
        }
    }

    /// TTOU: one instance fewer, never below one. An idle instance goes at
    /// once; otherwise the next one to finish its request.
    pub async fn shrink(&self) {
        let _reshaping = self.reshaping.lock().await;
        let target = self.target.load(Ordering::SeqCst);
        if target <= 1 {
            tracing::warn!("TTOU ignored: one instance is the minimum");
            return;
        }
        self.target.store(target - 1, Ordering::SeqCst);
        tracing::info!("TTOU: shrinking to {} instances", target - 1);
        self.remove_idle(
            |pool, _| pool.total.load(Ordering::SeqCst) > pool.target.load(Ordering::SeqCst),
            "the pool was shrunk (TTOU)",
        );
    }

    /// HUP: loads the model file again and swaps it in with no failed request.
    /// New instances boot before any old one leaves; old ones finish what
    /// they are doing and retire. If the new file is bad, the old model keeps
    /// serving.
    pub async fn reload(&self) -> anyhow::Result<()> {
        let _reshaping = self.reshaping.lock().await;
        let old = self.model();
        let model = Model::load(
            &self.engine,
            &self.linker,
            &old.path,
            self.config.memory_limit,
            &self.cache,
        )
        .await?;
        let model = Arc::new(model);
        let started = Instant::now();
        let count = self.target.load(Ordering::SeqCst);
        let mut fresh = Vec::with_capacity(count);
        for _ in 0..count {
            let instance = self
                .new_instance(Arc::clone(&model))
                .await
                .map_err(|err| anyhow::anyhow!("{}", crate::model::root_cause(&err)))?;
            fresh.push(instance);
        }
        let ids: Vec<InstanceId> = fresh.iter().map(|i| i.id).collect();
        {
            let mut current = self.model.write().unwrap();
            *current = Arc::clone(&model);
            // From here on only the fresh instances count.
            self.total.store(fresh.len(), Ordering::SeqCst);
        }
        for instance in fresh {
            self.give_back(instance);
        }
        self.remove_idle(|pool, i| !pool.is_current(i), "the model was reloaded");
        tracing::info!(
            "reloaded {}: model {} v{} ({}), instances {ids:?} booted in {:?}",
            model.path.display(),
            model.metadata.name,
            model.metadata.version,
            model.compiled,
            started.elapsed()
        );
        if model.metadata.name != old.metadata.name {
            tracing::warn!(
                "the model's name changed from {:?} to {:?}: clients must use /v2/models/{}/...",
                old.metadata.name,
                model.metadata.name,
                model.metadata.name
            );
        }
        Ok(())
    }
}

/// The first wait after a failed boot; it doubles up to [`MAX_BACKOFF`].
const FIRST_BACKOFF: Duration = Duration::from_millis(10);
const MAX_BACKOFF: Duration = Duration::from_secs(5);

/// Calls `attempt` until it succeeds, waiting between failures with
/// exponential backoff. `failed` sees each error and the wait before the
/// next try, and returns whether to keep trying. A boot that failed once
/// (the pooling allocator out of slots, a transient host error) usually
/// succeeds later; giving up for good would leave the pool short forever.
async fn retry_with_backoff<T, E, F>(
    mut attempt: impl FnMut() -> F,
    mut failed: impl FnMut(&E, Duration) -> bool,
) -> Option<T>
where
    F: std::future::Future<Output = Result<T, E>>,
{
    let mut delay = FIRST_BACKOFF;
    loop {
        match attempt().await {
            Ok(value) => return Some(value),
            Err(err) => {
                if !failed(&err, delay) {
                    return None;
                }
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(MAX_BACKOFF);
            }
        }
    }
}

/// A deterministic spread in `0..=max`, from the instance id: no random
/// number generator needed to keep instances from recycling in lockstep.
fn jitter(id: u64, max: u64) -> u64 {
    if max == 0 {
        return 0;
    }
    // splitmix64
    let mut z = id.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    (z ^ (z >> 31)) % (max + 1)
}

/// A place in the bounded wait queue, released when dropped (including when
/// the waiting request is cancelled).
struct QueueSlot<'a>(&'a AtomicUsize);

impl<'a> QueueSlot<'a> {
    fn take(pool: &'a Pool) -> Result<Self, ApiError> {
        let before = pool.queued.fetch_add(1, Ordering::SeqCst);
        let slot = QueueSlot(&pool.queued);
        if before >= pool.config.max_queue {
            return Err(ApiError::unavailable(format!(
                "all {} instances are busy and {} requests are already waiting; retry later",
                pool.total.load(Ordering::SeqCst),
                pool.config.max_queue
            )));
        }
        Ok(slot)
    }
}

impl Drop for QueueSlot<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

/// The right to use one instance for one request.
pub struct Lease {
    pool: Arc<Pool>,
    instance: Option<Instance>,
    /// Set while a call is in flight and kept if it poisoned the instance, so
    /// that a lease dropped mid-call replaces its instance instead of
    /// returning a store in an unknown state.
    replace_because: Option<(&'static str, String)>,
}

impl Lease {
    pub fn instance_id(&self) -> InstanceId {
        self.instance().id
    }

    /// The model this instance runs.
    pub fn model(&self) -> &Arc<Model> {
        &self.instance().model
    }

    fn instance(&self) -> &Instance {
        self.instance
            .as_ref()
            .expect("a live lease holds an instance")
    }

    pub async fn predict(
        &mut self,
        inputs: &[Tensor],
        parameters: &[(String, String)],
        timeout: Duration,
    ) -> Result<Vec<Tensor>, Fault> {
        self.replace_because = Some(("cancelled", "the request was cancelled mid-call".into()));
        self.pool.calls.fetch_add(1, Ordering::Relaxed);
        let started = Instant::now();
        let instance = self
            .instance
            .as_mut()
            .expect("a live lease holds an instance");
        let result = instance.predict(inputs, parameters, timeout).await;
        self.pool.metrics.computed(started.elapsed());
        self.replace_because = match &result {
            Err(fault) if fault.poisons_instance() => Some((fault.kind(), fault.to_string())),
            _ => None,
        };
        result
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        if let Some(instance) = self.instance.take() {
            self.pool.take_back(instance, self.replace_because.take());
        }
    }
}

#[cfg(test)]
mod tests {
    use std::cell::RefCell;
    use std::time::Duration;

    use super::{jitter, retry_with_backoff};

    #[tokio::test]
    async fn a_failed_boot_is_retried_with_doubling_backoff_until_it_succeeds() {
        let attempts = RefCell::new(Vec::new());
        let started = tokio::time::Instant::now();
        let booted = retry_with_backoff(
            || {
                attempts.borrow_mut().push(started.elapsed());
                let n = attempts.borrow().len();
                async move { if n < 4 { Err("no slot") } else { Ok(n) } }
            },
            |_, _| true,
        )
        .await;
        assert_eq!(booted, Some(4));
        // Waits of 10, 20 and 40 ms between the four tries (real time: a
        // busy machine may stretch them, never shorten them).
        let at: Vec<Duration> = attempts.borrow().clone();
        for (gap, want) in at.windows(2).zip([10, 20, 40]) {
            let gap = gap[1] - gap[0];
            assert!(gap >= Duration::from_millis(want), "{at:?}");
        }
        assert!(at[3] < Duration::from_secs(2), "{at:?}");
    }

    #[tokio::test]
    async fn retrying_stops_when_the_instance_is_no_longer_wanted() {
        let mut tries = 0;
        let booted: Option<()> = retry_with_backoff(
            || async { Err("no slot") },
            |_, _| {
                tries += 1;
                tries < 3
            },
        )
        .await;
        assert_eq!((booted, tries), (None, 3));
    }

    #[test]
    fn jitter_spreads_instances_within_its_bound() {
        let values: Vec<u64> = (1..=64).map(|id| jitter(id, 10)).collect();
        assert!(values.iter().all(|&v| v <= 10));
        let distinct: std::collections::HashSet<_> = values.iter().collect();
        assert!(distinct.len() >= 8, "{values:?}");
        assert_eq!(jitter(7, 0), 0);
    }
}
