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

mod elastic;
mod lease;
mod replace;
#[cfg(test)]
mod tests;
mod worker;

use crate::core::error::{Error, Kind};
use elastic::spawn_reaper;
pub use lease::Lease;
use replace::jitter;
pub use worker::{Boot, ModelBoot, Worker};

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
        Lease::new(Arc::clone(self), instance)
    }

    /// Makes an instance idle, as of `now`.
    fn give_back(&self, instance: B::Worker, now: Instant) {
        self.idle.lock().unwrap().push_back(Idle {
            since: now,
            worker: instance,
        });
        self.free.add_permits(1);
    }
}

impl<B: Boot> Drop for Pool<B> {
    fn drop(&mut self) {
        for idle in self.idle.get_mut().unwrap().drain(..) {
            self.metrics.instance_gone(idle.worker.id());
        }
    }
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

impl From<Overloaded> for Error {
    fn from(overloaded: Overloaded) -> Self {
        Error::new(Kind::Unavailable, overloaded.to_string())
    }
}
