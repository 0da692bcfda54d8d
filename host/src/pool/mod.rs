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
//! A pool serves one compiled model and only hands out, replaces and resizes
//! its instances: replacing faulted ones (retrying a failed boot with
//! backoff), recycling after `--max-requests`, growing and shrinking. An
//! elastic pool (one with `min_instances`) also sizes itself: a request that finds every instance
//! busy boots one more (up to the maximum), and instances idle for the idle
//! timeout retire (down to the minimum, which may be 0: scale to zero). Loading
//! a new version is not the pool's business: the registry builds a new
//! served model with a pool of its own and lets this one drain.
//!
//! What the pool needs of an instance is the small [`Worker`] trait, and of
//! a model the [`Boot`] trait, so that its rules (fair queueing, timeouts,
//! replacement, resizing) are unit-tested with fake instances under tokio's
//! paused clock; [`ModelBoot`] and [`Instance`] are the real ones.

use std::collections::VecDeque;
use std::future::Future;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use tokio::sync::{Semaphore, SemaphorePermit};
use tokio::time::Instant;
use wasmtime::Engine;

use crate::core::metrics::ModelMetrics;
use crate::model::Model;
use crate::runtime::contract::Tensor;
use crate::runtime::instance::{Fault, Instance, InstanceId};

/// What the pool needs of one instance.
pub trait Worker: Send + 'static {
    fn id(&self) -> InstanceId;
    /// Linear memory it holds, if that changed since it last said so: the
    /// pool sets the per-instance memory gauge only then, since setting it
    /// (two label strings and a map lookup) after every call was a cost of
    /// every request.
    fn memory_changed(&mut self) -> Option<usize>;
    /// Whether `--max-requests` says it has served enough.
    fn recycle_due(&self) -> bool;
    /// Requests it served.
    fn served(&self) -> u64;
    fn predict(
        &mut self,
        inputs: &[Tensor],
        parameters: &[(String, String)],
        started: std::time::Instant,
        timeout: Duration,
    ) -> impl Future<Output = Result<Vec<Tensor>, Fault>> + Send;
}

/// How the pool makes instances of its model.
pub trait Boot: Send + Sync + 'static {
    type Worker: Worker;
    fn boot(
        &self,
        id: InstanceId,
        recycle_after: Option<u64>,
    ) -> impl Future<Output = wasmtime::Result<Self::Worker>> + Send;
}

/// Instances of a compiled model, in stores of the host's engine.
pub struct ModelBoot {
    pub engine: Engine,
    pub model: Arc<Model>,
    pub memory_limit: usize,
}

impl Boot for ModelBoot {
    type Worker = Instance;

    fn boot(
        &self,
        id: InstanceId,
        recycle_after: Option<u64>,
    ) -> impl Future<Output = wasmtime::Result<Instance>> + Send {
        Instance::new(
            &self.engine,
            Arc::clone(&self.model),
            id,
            self.memory_limit,
            recycle_after,
        )
    }
}

impl Worker for Instance {
    fn id(&self) -> InstanceId {
        self.id
    }

    fn memory_changed(&mut self) -> Option<usize> {
        Instance::memory_changed(self)
    }

    fn recycle_due(&self) -> bool {
        Instance::recycle_due(self)
    }

    fn served(&self) -> u64 {
        self.served
    }

    fn predict(
        &mut self,
        inputs: &[Tensor],
        parameters: &[(String, String)],
        started: std::time::Instant,
        timeout: Duration,
    ) -> impl Future<Output = Result<Vec<Tensor>, Fault>> + Send {
        Instance::predict(self, inputs, parameters, started, timeout)
    }
}

/// The pool of a served model.
pub type ModelPool = Pool<ModelBoot>;

/// The limits a pool enforces.
#[derive(Debug, Clone, PartialEq)]
pub struct PoolConfig {
    /// Instances booted at start.
    pub instances: usize,
    /// Most instances the pool may grow to (TTIN, a resize, or demand when
    /// elastic).
    pub max_instances: usize,
    /// `Some(min)`: the pool is elastic: it grows with demand up to
    /// `max_instances` and shrinks when idle down to `min` (0: scale to zero).
    pub min_instances: Option<usize>,
    /// How long an elastic pool's instance may sit unused before it retires.
    pub idle_timeout: Duration,
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

/// Why a request got no instance: the pool's own words, which the HTTP
/// edge turns into a 503 with `Retry-After`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Overloaded {
    /// Every instance busy and the queue full.
    QueueFull { instances: usize, max_queue: usize },
    /// No instance became free within the queue timeout.
    Waited(Duration),
}

impl std::fmt::Display for Overloaded {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Overloaded::QueueFull {
                instances,
                max_queue,
            } => write!(
                f,
                "all {instances} instances are busy and {max_queue} requests are already \
                 waiting; retry later"
            ),
            Overloaded::Waited(limit) => write!(
                f,
                "no instance became free within {limit:?}; retry later, or give the model \
                 more instances or a longer queue timeout"
            ),
        }
    }
}

pub struct Pool<B: Boot> {
    boot: B,
    metrics: ModelMetrics,
    config: PoolConfig,
    /// Host-wide instance ids: never reused, so logs, metrics and
    /// `x-instance-id` name one incarnation across every model.
    ids: Arc<AtomicU64>,
    /// How many instances the pool should have (TTIN/TTOU and resizes move it).
    target: AtomicUsize,
    /// Idle instances, the most recently used at the back (handed out first,
    /// its caches warm), the longest idle at the front (retired first).
    idle: Mutex<VecDeque<Idle<B::Worker>>>,
    /// One permit per idle instance; tokio's semaphore is FIFO-fair.
    free: Semaphore,
    queued: AtomicUsize,
    busy: AtomicUsize,
    /// Instances alive: idle, busy, or being replaced.
    total: AtomicUsize,
    /// Instances an elastic pool is booting for waiting requests.
    booting: AtomicUsize,
    replaced: AtomicU64,
    /// Instances that failed to boot as replacements and are being retried:
    /// the pool's shortfall, shown in `/health`, readiness and metrics.
    missing: AtomicUsize,
    /// Guest calls made, whatever their outcome.
    calls: AtomicU64,
    /// Serialises resizes.
    reshaping: tokio::sync::Mutex<()>,
}

/// An idle instance and when it last finished a request.
struct Idle<W> {
    since: Instant,
    worker: W,
}

/// What `/health` reports.
#[derive(Debug, Clone, Copy, serde::Serialize)]
pub struct Status {
    pub total: usize,
    pub target: usize,
    pub booting: usize,
    pub busy: usize,
    pub idle: usize,
    pub queued: usize,
    pub replaced: u64,
    pub missing: usize,
    pub calls: u64,
}

impl<B: Boot> Pool<B> {
    /// Boots `config.instances` instances, logging each as gunicorn logs its
    /// workers.
    pub async fn start(
        boot: B,
        config: PoolConfig,
        metrics: ModelMetrics,
        ids: Arc<AtomicU64>,
    ) -> wasmtime::Result<Arc<Pool<B>>> {
        let pool = Arc::new(Pool {
            boot,
            metrics,
            ids,
            target: AtomicUsize::new(config.instances),
            idle: Mutex::new(VecDeque::with_capacity(config.instances)),
            free: Semaphore::new(0),
            queued: AtomicUsize::new(0),
            busy: AtomicUsize::new(0),
            total: AtomicUsize::new(0),
            booting: AtomicUsize::new(0),
            replaced: AtomicU64::new(0),
            missing: AtomicUsize::new(0),
            calls: AtomicU64::new(0),
            reshaping: tokio::sync::Mutex::new(()),
            config,
        });
        // Each boot gets its line, as gunicorn logs its workers; past a
        // screenful, one line for the lot.
        let started = Instant::now();
        let quiet = pool.config.instances > LOG_EACH_BOOT;
        for _ in 0..pool.config.instances {
            pool.add_instance(!quiet).await?;
        }
        if quiet {
            tracing::info!(
                model = %pool.metrics.model_name(),
                "booted {} instances in {:?}",
                pool.config.instances,
                started.elapsed()
            );
        }
        if pool.config.min_instances.is_some() {
            spawn_reaper(&pool, pool.config.idle_timeout);
        }
        Ok(pool)
    }

    pub fn config(&self) -> &PoolConfig {
        &self.config
    }

    pub fn metrics(&self) -> &ModelMetrics {
        &self.metrics
    }

    pub fn status(&self) -> Status {
        Status {
            total: self.total.load(Ordering::SeqCst),
            target: self.target.load(Ordering::SeqCst),
            booting: self.booting.load(Ordering::SeqCst),
            busy: self.busy.load(Ordering::SeqCst),
            idle: self.free.available_permits(),
            queued: self.queued.load(Ordering::SeqCst),
            replaced: self.replaced.load(Ordering::SeqCst),
            missing: self.missing.load(Ordering::SeqCst),
            calls: self.calls.load(Ordering::SeqCst),
        }
    }

    /// Can serve: at least one instance is up, or the pool is elastic and
    /// boots one for the first request (scale to zero). A pool short of its
    /// target (a replacement being retried, a resize under way) still serves
    /// and `/health` says `degraded`; a full queue is answered per request
    /// with a 503, never by readiness, which would take the whole host out of
    /// its load balancer for a moment's burst.
    pub fn ready(&self) -> bool {
        self.total.load(Ordering::SeqCst) > 0 || self.config.min_instances.is_some()
    }

    /// Requests computing or waiting: the pool is drained when this is 0.
    pub fn in_flight(&self) -> usize {
        self.busy.load(Ordering::SeqCst) + self.queued.load(Ordering::SeqCst)
    }

    async fn new_instance(&self) -> wasmtime::Result<B::Worker> {
        let id = self.ids.fetch_add(1, Ordering::SeqCst);
        let recycle_after = self
            .config
            .max_requests
            .map(|n| n.saturating_add(jitter(id, self.config.max_requests_jitter)));
        self.boot.boot(id, recycle_after).await
    }

    /// Boots one more instance and makes it available.
    async fn add_instance(&self, log: bool) -> wasmtime::Result<InstanceId> {
        let started = Instant::now();
        let mut instance = match self.new_instance().await {
            Ok(instance) => instance,
            Err(err) => {
                self.metrics.boot_failed();
                return Err(err);
            }
        };
        let id = instance.id();
        if log {
            tracing::info!(
                instance = id,
                model = %self.metrics.model_name(),
                "booted instance {id} in {:?}",
                started.elapsed()
            );
        }
        self.total.fetch_add(1, Ordering::SeqCst);
        if let Some(bytes) = instance.memory_changed() {
            self.metrics.instance_memory(id, bytes);
        }
        self.give_back(instance, Instant::now());
        Ok(id)
    }

    /// Waits for a free instance: at once if one is idle, else in FIFO order
    /// behind the other waiting requests, within the queue's bounds.
    pub async fn acquire(self: &Arc<Self>) -> Result<Lease<B>, Overloaded> {
        if let Some(lease) = self.try_acquire() {
            return Ok(lease);
        }
        let arrived = Instant::now();
        let _waiting = QueueSlot::take(self)?;
        self.grow_for_demand();
        let wait = tokio::time::timeout(self.config.queue_timeout, self.free.acquire());
        let permit = match wait.await {
            Ok(permit) => permit.expect("the pool's semaphore is never closed"),
            Err(_) => return Err(Overloaded::Waited(self.config.queue_timeout)),
        };
        let now = Instant::now();
        Ok(self.lease(permit, now.saturating_duration_since(arrived), now))
    }

    /// An idle instance, if there is one now. A request that finds one
    /// waited for none: one clock read on that path, for the busy level
    /// (each read is measurable at 100k req/s).
    pub fn try_acquire(self: &Arc<Self>) -> Option<Lease<B>> {
        let permit = self.free.try_acquire().ok()?;
        Some(self.lease(permit, Duration::ZERO, Instant::now()))
    }

    /// Hands out an idle instance at `now`, after `waited` in the queue.
    fn lease(
        self: &Arc<Self>,
        permit: SemaphorePermit<'_>,
        waited: Duration,
        now: Instant,
    ) -> Lease<B> {
        permit.forget();
        let instance = self
            .idle
            .lock()
            .unwrap()
            .pop_back()
            .expect("a permit always has an idle instance behind it")
            .worker;
        self.busy.fetch_add(1, Ordering::SeqCst);
        self.metrics.busy_begins(now.into_std());
        self.metrics.queued(waited);
        Lease {
            pool: Arc::clone(self),
            instance: Some(instance),
            replace_because: None,
            in_call: false,
            call_ended: None,
        }
    }

    /// Makes an instance idle, as of `now`.
    fn give_back(&self, instance: B::Worker, now: Instant) {
        self.idle.lock().unwrap().push_back(Idle {
            since: now,
            worker: instance,
        });
        self.free.add_permits(1);
    }

    /// A request found every instance busy: an elastic pool below its
    /// maximum boots one more for it. The new instance joins the pool like a
    /// returning one, so it goes to the longest-waiting request, and it is
    /// kept even if the request that asked for it gives up.
    fn grow_for_demand(self: &Arc<Self>) {
        if self.config.min_instances.is_none() {
            return;
        }
        let max = self.config.max_instances;
        let grown = self
            .target
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |t| {
                (t < max).then_some(t + 1)
            });
        if grown.is_err() {
            return;
        }
        self.booting.fetch_add(1, Ordering::SeqCst);
        let pool = Arc::clone(self);
        tokio::spawn(async move {
            if let Err(err) = pool.add_instance(true).await {
                pool.target.fetch_sub(1, Ordering::SeqCst);
                tracing::warn!(
                    model = %pool.metrics.model_name(),
                    "could not boot an instance for waiting requests: {}; they wait for the \
                     running ones",
                    crate::model::root_cause(&err)
                );
            }
            pool.booting.fetch_sub(1, Ordering::SeqCst);
        });
    }

    /// Retires instances that sat idle for `idle_timeout`, longest idle
    /// first, while an elastic pool is above its minimum.
    /// Returns how many retired.
    fn retire_idle(&self) -> usize {
        let Some(min) = self.config.min_instances else {
            return 0;
        };
        let idle_timeout = self.config.idle_timeout;
        let mut retired = 0;
        loop {
            if self.target.load(Ordering::SeqCst) <= min {
                return retired;
            }
            let mut idle = self.idle.lock().unwrap();
            match idle.front() {
                Some(oldest) if oldest.since.elapsed() >= idle_timeout => {}
                _ => return retired,
            }
            // The permit that stands for it, so that no request is promised
            // this instance; none free means requests are taking them now.
            let Ok(permit) = self.free.try_acquire() else {
                return retired;
            };
            permit.forget();
            let instance = idle.pop_front().expect("checked above").worker;
            drop(idle);
            self.target.fetch_sub(1, Ordering::SeqCst);
            self.retire(
                instance,
                &format!("idle for {idle_timeout:?} (--idle-timeout)"),
            );
            retired += 1;
        }
    }

    /// Drops an instance for good.
    fn retire(&self, instance: B::Worker, why: &str) {
        self.total.fetch_sub(1, Ordering::SeqCst);
        let id = instance.id();
        self.metrics.instance_gone(id);
        tracing::info!(instance = id, "retired instance {id}: {why}");
    }

    /// Throws an instance away and boots a new one in its place, off the
    /// request's path. A failed boot is retried with backoff for as long as
    /// the pool is in use; meanwhile the pool is one short, and says so.
    fn replace(self: &Arc<Self>, old: B::Worker, kind: &'static str, cause: String) {
        self.metrics.replaced(kind);
        self.metrics.instance_gone(old.id());
        // Weak: a pool that was unloaded must not be kept alive (with its
        // memory) by a replacement that keeps failing.
        let weak = Arc::downgrade(self);
        tokio::spawn(async move {
            let old_id = old.id();
            // Drop first: the pooling allocator's slot is then free for the
            // replacement.
            drop(old);
            let started = Instant::now();
            let mut missing = false;
            let boot = || {
                let weak: Weak<Pool<B>> = weak.clone();
                async move {
                    match weak.upgrade() {
                        Some(pool) => pool.new_instance().await.map(|i| Some((pool, i))),
                        None => Ok(None),
                    }
                }
            };
            let booted = retry_with_backoff(boot, |err, delay| {
                let Some(pool) = weak.upgrade() else {
                    return false;
                };
                pool.metrics.boot_failed();
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
            let Some(Some((pool, mut new))) = booted else {
                return;
            };
            if missing {
                pool.missing.fetch_sub(1, Ordering::SeqCst);
                pool.total.fetch_add(1, Ordering::SeqCst);
            }
            pool.replaced.fetch_add(1, Ordering::SeqCst);
            let new_id = new.id();
            pool.metrics
                .event(format!("instance {old_id} replaced by {new_id}: {cause}"));
            tracing::warn!(
                old = old_id,
                new = new_id,
                "replaced instance {old_id} with {new_id} in {:?}: {cause}",
                started.elapsed()
            );
            if let Some(bytes) = new.memory_changed() {
                pool.metrics.instance_memory(new_id, bytes);
            }
            pool.give_back(new, Instant::now());
        });
    }

    /// Where a returning instance goes: back to the pool, replaced, or retired.
    /// An instance came back from a lease at `now`, perhaps poisoned.
    fn take_back(
        self: &Arc<Self>,
        mut instance: B::Worker,
        fault: Option<(&'static str, String)>,
        now: Instant,
    ) {
        self.busy.fetch_sub(1, Ordering::SeqCst);
        self.metrics.busy_ends(now.into_std());
        if let Some((kind, cause)) = fault {
            self.replace(instance, kind, cause);
        } else if self.total.load(Ordering::SeqCst) > self.target.load(Ordering::SeqCst) {
            self.retire(instance, "the pool was shrunk");
        } else if instance.recycle_due() {
            let cause = format!(
                "recycled after {} requests (--max-requests)",
                instance.served()
            );
            self.replace(instance, "recycled", cause);
        } else {
            if let Some(bytes) = instance.memory_changed() {
                self.metrics.instance_memory(instance.id(), bytes);
            }
            self.give_back(instance, now);
        }
    }

    /// Removes idle instances while the pool has more than its target: each
    /// removal takes a permit, so the semaphore and the stack stay in step.
    /// Busy ones are retired when they come back.
    fn remove_surplus(&self, why: &str) {
        while self.total.load(Ordering::SeqCst) > self.target.load(Ordering::SeqCst) {
            let Ok(permit) = self.free.try_acquire() else {
                return;
            };
            permit.forget();
            let instance = self.idle.lock().unwrap().pop_back();
            let instance = instance.expect("a permit always has an idle instance behind it");
            self.retire(instance.worker, why);
        }
    }

    /// Fewest instances a resize may leave: 1, or an elastic pool's minimum.
    fn floor(&self) -> usize {
        self.config.min_instances.unwrap_or(1)
    }

    /// Changes the number of instances to `wanted` (within the pool's floor
    /// and maximum) with no failed request: new instances boot before they
    /// count; surplus ones leave when idle. Returns the new target. An
    /// elastic pool then follows its load again from there.
    pub async fn resize(&self, wanted: usize) -> wasmtime::Result<usize> {
        let _reshaping = self.reshaping.lock().await;
        let wanted = wanted.clamp(self.floor(), self.config.max_instances);
        let target = self.target.load(Ordering::SeqCst);
        if wanted > target {
            for added in target..wanted {
                self.target.store(added + 1, Ordering::SeqCst);
                if let Err(err) = self.add_instance(true).await {
                    self.target.store(added, Ordering::SeqCst);
                    return Err(err);
                }
            }
        } else if wanted < target {
            self.target.store(wanted, Ordering::SeqCst);
            self.remove_surplus("the pool was shrunk");
        }
        Ok(wanted)
    }

    /// TTIN: one more instance, up to the pool's maximum.
    pub async fn grow(&self) {
        let target = self.target.load(Ordering::SeqCst);
        if target >= self.config.max_instances {
            tracing::warn!(
                "TTIN ignored: already at {target} instances, the most this pool was sized for"
            );
            return;
        }
        match self.resize(target + 1).await {
            Ok(n) => tracing::info!("TTIN: {n} instances"),
            Err(err) => tracing::error!("TTIN failed: {}", crate::model::root_cause(&err)),
        }
    }

    /// TTOU: one instance fewer, never below the floor. An idle instance
    /// goes at once; otherwise the next one to finish its request.
    pub async fn shrink(&self) {
        let target = self.target.load(Ordering::SeqCst);
        if target <= self.floor() {
            tracing::warn!("TTOU ignored: {target} instances is this pool's minimum");
            return;
        }
        let _ = self.resize(target - 1).await;
        tracing::info!("TTOU: shrinking to {} instances", target - 1);
    }
}

impl<B: Boot> Drop for Pool<B> {
    fn drop(&mut self) {
        for idle in self.idle.get_mut().unwrap().drain(..) {
            self.metrics.instance_gone(idle.worker.id());
        }
    }
}

/// Retires an elastic pool's idle instances for as long as the pool lives,
/// checking a few times per idle timeout (so an instance retires at most a
/// quarter late).
fn spawn_reaper<B: Boot>(pool: &Arc<Pool<B>>, idle_timeout: Duration) {
    let weak = Arc::downgrade(pool);
    let every = (idle_timeout / 4).clamp(Duration::from_millis(10), Duration::from_secs(1));
    let metrics = Arc::clone(pool.metrics.host());
    crate::core::supervise::spawn("elastic-reaper", metrics, move || {
        let weak = weak.clone();
        async move {
            let mut ticks = tokio::time::interval(every);
            ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                ticks.tick().await;
                let Some(pool) = weak.upgrade() else {
                    return;
                };
                if pool.retire_idle() > 0 {
                    release_free_memory();
                }
            }
        }
    });
}

/// Hands what glibc keeps in its arenas back to the system, so that retired
/// instances and unloaded models show in the process's memory.
pub fn release_free_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only releases free memory; it is safe to call at
    // any time from any thread.
    unsafe {
        libc::malloc_trim(0);
    }
}

/// Above this many instances at start, one line for them all.
const LOG_EACH_BOOT: usize = 64;

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
    (z ^ (z >> 31)) % max.saturating_add(1)
}

/// A place in the bounded wait queue, released when dropped (including when
/// the waiting request is cancelled).
struct QueueSlot<'a>(&'a AtomicUsize);

impl<'a> QueueSlot<'a> {
    fn take<B: Boot>(pool: &'a Pool<B>) -> Result<Self, Overloaded> {
        let before = pool.queued.fetch_add(1, Ordering::SeqCst);
        let slot = QueueSlot(&pool.queued);
        if before >= pool.config.max_queue {
            return Err(Overloaded::QueueFull {
                instances: pool.total.load(Ordering::SeqCst),
                max_queue: pool.config.max_queue,
            });
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
pub struct Lease<B: Boot> {
    pool: Arc<Pool<B>>,
    instance: Option<B::Worker>,
    /// Set while a call is in flight and kept if it poisoned the instance, so
    /// that a lease dropped mid-call replaces its instance instead of
    /// returning a store in an unknown state.
    replace_because: Option<(&'static str, String)>,
    /// A call is in flight: a lease dropped now (its request cancelled)
    /// replaces its instance. A flag rather than a `replace_because` set in
    /// advance, which cost an allocation per request.
    in_call: bool,
    /// When the last call ended: the lease is dropped right after, and
    /// this reading serves as the time the instance came back.
    call_ended: Option<Instant>,
}

impl<B: Boot> Lease<B> {
    pub fn instance_id(&self) -> InstanceId {
        self.instance
            .as_ref()
            .expect("a live lease holds an instance")
            .id()
    }

    pub async fn predict(
        &mut self,
        inputs: &[Tensor],
        parameters: &[(String, String)],
        timeout: Duration,
    ) -> Result<Vec<Tensor>, Fault> {
        self.in_call = true;
        self.pool.calls.fetch_add(1, Ordering::Relaxed);
        let started = Instant::now();
        let instance = self
            .instance
            .as_mut()
            .expect("a live lease holds an instance");
        let result = instance
            .predict(inputs, parameters, started.into_std(), timeout)
            .await;
        let ended = Instant::now();
        self.call_ended = Some(ended);
        self.pool
            .metrics
            .computed(ended.saturating_duration_since(started));
        self.in_call = false;
        self.replace_because = match &result {
            Err(fault) if fault.poisons_instance() => Some((fault.kind(), fault.to_string())),
            _ => None,
        };
        result
    }
}

impl<B: Boot> Drop for Lease<B> {
    fn drop(&mut self) {
        if let Some(instance) = self.instance.take() {
            let why = self.replace_because.take().or_else(|| {
                self.in_call
                    .then(|| ("cancelled", "the request was cancelled mid-call".into()))
            });
            let now = self.call_ended.unwrap_or_else(Instant::now);
            self.pool.take_back(instance, why, now);
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

    /// The pool's rules with fake instances: no wasmtime, and tokio's clock
    /// paused, so waits and timeouts are exact and instant.
    mod fake {
        use std::future::Future;
        use std::sync::Arc;
        use std::sync::atomic::{AtomicUsize, Ordering};
        use std::time::Duration;

        use super::super::*;
        use crate::core::metrics::Metrics;

        /// A fake instance: its input's first byte says what to do.
        pub struct Fake {
            id: InstanceId,
            served: u64,
        }

        /// 0: answer after 100 ms; 1: trap at once; 2: run for 10 s.
        pub fn input(action: u8) -> Vec<Tensor> {
            vec![Tensor {
                datatype: crate::runtime::contract::Datatype::Uint8,
                shape: vec![1],
                data: vec![action],
            }]
        }

        impl Worker for Fake {
            fn id(&self) -> InstanceId {
                self.id
            }
            fn memory_changed(&mut self) -> Option<usize> {
                None
            }
            fn recycle_due(&self) -> bool {
                false
            }
            fn served(&self) -> u64 {
                self.served
            }
            fn predict(
                &mut self,
                inputs: &[Tensor],
                _: &[(String, String)],
                _: std::time::Instant,
                timeout: Duration,
            ) -> impl Future<Output = Result<Vec<Tensor>, Fault>> + Send {
                self.served += 1;
                let action = inputs[0].data[0];
                async move {
                    match action {
                        1 => Err(Fault::Trap("asked to trap".into())),
                        2 => {
                            tokio::time::sleep(Duration::from_secs(10)).await;
                            Err(Fault::Timeout(timeout))
                        }
                        _ => {
                            tokio::time::sleep(Duration::from_millis(100)).await;
                            Ok(Vec::new())
                        }
                    }
                }
            }
        }

        /// Boots fakes; fails the boots numbered in `fail` (0 is the first).
        pub struct FakeBoot {
            pub boots: Arc<AtomicUsize>,
            pub fail: Vec<usize>,
        }

        impl Boot for FakeBoot {
            type Worker = Fake;
            fn boot(
                &self,
                id: InstanceId,
                _: Option<u64>,
            ) -> impl Future<Output = wasmtime::Result<Fake>> + Send {
                let n = self.boots.fetch_add(1, Ordering::SeqCst);
                let fails = self.fail.contains(&n);
                async move {
                    if fails {
                        Err(wasmtime::Error::msg("no slot"))
                    } else {
                        Ok(Fake { id, served: 0 })
                    }
                }
            }
        }

        pub async fn pool(
            instances: usize,
            max_queue: usize,
            fail: Vec<usize>,
        ) -> Arc<Pool<FakeBoot>> {
            let config = PoolConfig {
                instances,
                max_instances: instances * 2,
                min_instances: None,
                idle_timeout: Duration::from_secs(1),
                memory_limit: 1 << 20,
                queue_timeout: Duration::from_secs(1),
                max_queue,
                max_requests: None,
                max_requests_jitter: 0,
            };
            start(config, fail).await
        }

        /// An elastic pool from `min` to `max`, idle timeout 1 s.
        pub async fn elastic(min: usize, max: usize, fail: Vec<usize>) -> Arc<Pool<FakeBoot>> {
            let config = PoolConfig {
                instances: min,
                max_instances: max,
                min_instances: Some(min),
                idle_timeout: Duration::from_secs(1),
                memory_limit: 1 << 20,
                queue_timeout: Duration::from_secs(1),
                max_queue: 64,
                max_requests: None,
                max_requests_jitter: 0,
            };
            start(config, fail).await
        }

        async fn start(config: PoolConfig, fail: Vec<usize>) -> Arc<Pool<FakeBoot>> {
            let metrics = Arc::new(Metrics::new()).for_model("fake", "1", false);
            let boot = FakeBoot {
                boots: Arc::new(AtomicUsize::new(0)),
                fail,
            };
            Pool::start(boot, config, metrics, Arc::new(AtomicU64::new(1)))
                .await
                .unwrap()
        }
    }

    use std::sync::{Arc, Mutex};

    use fake::{elastic, input, pool};
    use tokio::time::Instant;

    use super::Overloaded;

    #[tokio::test(start_paused = true)]
    async fn waiting_requests_are_served_in_arrival_order_and_time_out_with_503() {
        let pool = pool(1, 8, vec![]).await;
        let mut first = pool.acquire().await.unwrap();
        let order = Arc::new(Mutex::new(Vec::new()));
        let waiters: Vec<_> = (0..3)
            .map(|n| {
                let (pool, order) = (Arc::clone(&pool), Arc::clone(&order));
                tokio::spawn(async move {
                    // Arrive 10 ms apart.
                    tokio::time::sleep(Duration::from_millis(10 * n)).await;
                    let mut lease = pool.acquire().await?;
                    order.lock().unwrap().push(n);
                    lease
                        .predict(&input(0), &[], Duration::from_secs(1))
                        .await
                        .unwrap();
                    Ok::<_, Overloaded>(())
                })
            })
            .collect();
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert_eq!(pool.status().queued, 3);
        first
            .predict(&input(0), &[], Duration::from_secs(1))
            .await
            .unwrap();
        drop(first);
        // 3 × 100 ms of work behind one instance: the third waited 350 ms
        // of its 1 s queue timeout, and all were served in order.
        for waiter in waiters {
            waiter.await.unwrap().unwrap();
        }
        assert_eq!(*order.lock().unwrap(), [0, 1, 2]);
        // A request that waits longer than the queue timeout gets Waited.
        let _held = pool.acquire().await.unwrap();
        let started = Instant::now();
        let late = pool.acquire().await.err().unwrap();
        assert_eq!(late, Overloaded::Waited(Duration::from_secs(1)));
        assert_eq!(started.elapsed(), Duration::from_secs(1));
    }

    #[tokio::test(start_paused = true)]
    async fn a_full_queue_refuses_at_once() {
        let pool = pool(1, 1, vec![]).await;
        let _held = pool.acquire().await.unwrap();
        let waiting = {
            let pool = Arc::clone(&pool);
            tokio::spawn(async move { pool.acquire().await.map(drop) })
        };
        tokio::task::yield_now().await;
        let refused = pool.acquire().await.err().unwrap();
        assert_eq!(
            refused,
            Overloaded::QueueFull {
                instances: 1,
                max_queue: 1
            }
        );
        drop(_held);
        waiting.await.unwrap().unwrap();
    }

    #[tokio::test(start_paused = true)]
    async fn a_trapped_or_abandoned_instance_is_replaced_with_a_new_id() {
        let pool = pool(1, 8, vec![]).await;
        let mut lease = pool.acquire().await.unwrap();
        let first = lease.instance_id();
        assert!(
            lease
                .predict(&input(1), &[], Duration::from_secs(1))
                .await
                .is_err()
        );
        drop(lease);
        tokio::time::sleep(Duration::from_millis(1)).await;
        let mut lease = pool.acquire().await.unwrap();
        let second = lease.instance_id();
        assert_ne!(second, first);
        // A call whose future is dropped half-way (a client that left).
        let long = input(2);
        {
            let call = lease.predict(&long, &[], Duration::from_secs(60));
            let _ = tokio::time::timeout(Duration::from_millis(5), call).await;
        }
        drop(lease);
        tokio::time::sleep(Duration::from_millis(1)).await;
        let lease = pool.acquire().await.unwrap();
        assert_ne!(lease.instance_id(), second);
        let status = pool.status();
        assert_eq!((status.total, status.replaced), (1, 2));
    }

    #[tokio::test(start_paused = true)]
    async fn a_replacement_that_fails_to_boot_is_retried_and_the_shortfall_shows() {
        // Boots 0 and 1 start the pool; 2 and 3 (the first replacement's
        // first two tries) fail.
        let pool = pool(2, 8, vec![2, 3]).await;
        let mut lease = pool.acquire().await.unwrap();
        assert!(
            lease
                .predict(&input(1), &[], Duration::from_secs(1))
                .await
                .is_err()
        );
        drop(lease);
        tokio::time::sleep(Duration::from_millis(5)).await;
        let status = pool.status();
        assert_eq!(
            (status.total, status.missing),
            (1, 1),
            "one short while retrying"
        );
        assert!(pool.ready(), "a pool short of its target still serves");
        // The retries wait 10 ms, then 20 ms.
        tokio::time::sleep(Duration::from_millis(40)).await;
        let status = pool.status();
        assert_eq!((status.total, status.missing), (2, 0), "{status:?}");
        assert!(pool.ready());
    }

    #[tokio::test(start_paused = true)]
    async fn a_resize_grows_at_once_and_shrinks_as_instances_come_back() {
        let pool = pool(2, 8, vec![]).await;
        assert_eq!(pool.resize(4).await.unwrap(), 4);
        assert_eq!(pool.status().total, 4);
        let (busy, also_busy) = (pool.acquire().await.unwrap(), pool.acquire().await.unwrap());
        assert_eq!(pool.resize(1).await.unwrap(), 1);
        // Idle ones leave at once; busy ones as they come back, until the
        // target is met.
        assert_eq!(pool.status().total, 2);
        drop(busy);
        assert_eq!(pool.status().total, 1);
        drop(also_busy);
        assert_eq!((pool.status().total, pool.status().idle), (1, 1));
        assert_eq!(
            pool.resize(100).await.unwrap(),
            4,
            "never past the pool's maximum"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_pool_scaled_to_zero_boots_an_instance_for_its_first_request() {
        let pool = elastic(0, 2, vec![]).await;
        assert_eq!(pool.status().total, 0);
        assert!(pool.ready(), "an idle pool at zero is ready to serve");
        let mut lease = pool.acquire().await.unwrap();
        lease
            .predict(&input(0), &[], Duration::from_secs(1))
            .await
            .unwrap();
        drop(lease);
        assert_eq!(pool.status().total, 1);
        // Idle for the timeout (checked every 250 ms): back to zero.
        tokio::time::sleep(Duration::from_millis(1300)).await;
        let status = pool.status();
        assert_eq!((status.total, status.target, status.idle), (0, 0, 0));
    }

    #[tokio::test(start_paused = true)]
    async fn a_burst_grows_an_elastic_pool_to_its_max_and_idle_instances_retire_to_its_min() {
        let pool = elastic(1, 4, vec![]).await;
        let peak = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let requests: Vec<_> = (0..12)
            .map(|_| {
                let (pool, peak) = (Arc::clone(&pool), Arc::clone(&peak));
                tokio::spawn(async move {
                    let mut lease = pool.acquire().await?;
                    peak.fetch_max(pool.status().total, std::sync::atomic::Ordering::SeqCst);
                    lease
                        .predict(&input(0), &[], Duration::from_secs(1))
                        .await
                        .unwrap();
                    Ok::<_, Overloaded>(lease.instance_id())
                })
            })
            .collect();
        let mut served = std::collections::HashSet::new();
        for request in requests {
            served.insert(request.await.unwrap().unwrap());
        }
        // 12 requests of 100 ms on 4 instances: every one served, by 4
        // instances, never more.
        assert_eq!(served.len(), 4);
        assert_eq!(peak.load(std::sync::atomic::Ordering::SeqCst), 4);
        assert_eq!(pool.status().total, 4);
        // Within the idle timeout nothing retires; after it, all but one.
        tokio::time::sleep(Duration::from_millis(700)).await;
        assert_eq!(pool.status().total, 4);
        tokio::time::sleep(Duration::from_millis(600)).await;
        let status = pool.status();
        assert_eq!((status.total, status.target, status.idle), (1, 1, 1));
    }

    #[tokio::test(start_paused = true)]
    async fn an_instance_that_fails_to_boot_on_demand_leaves_its_request_to_a_running_one() {
        // Boot 0 starts the pool; boot 1, the one for the second request, fails.
        let pool = elastic(1, 2, vec![1]).await;
        let mut first = pool.acquire().await.unwrap();
        let second = {
            let pool = Arc::clone(&pool);
            tokio::spawn(async move {
                let mut lease = pool.acquire().await?;
                lease
                    .predict(&input(0), &[], Duration::from_secs(1))
                    .await
                    .unwrap();
                Ok::<_, Overloaded>(lease.instance_id())
            })
        };
        first
            .predict(&input(0), &[], Duration::from_secs(1))
            .await
            .unwrap();
        let id = first.instance_id();
        drop(first);
        assert_eq!(second.await.unwrap().unwrap(), id);
        let status = pool.status();
        assert_eq!((status.total, status.target, status.booting), (1, 1, 0));
    }

    #[tokio::test(start_paused = true)]
    async fn a_fixed_pool_never_grows_by_itself() {
        let pool = pool(1, 8, vec![]).await;
        let _held = pool.acquire().await.unwrap();
        let waiting = {
            let pool = Arc::clone(&pool);
            tokio::spawn(async move { pool.acquire().await.map(drop) })
        };
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert_eq!((pool.status().total, pool.status().queued), (1, 1));
        drop(_held);
        waiting.await.unwrap().unwrap();
    }
}
