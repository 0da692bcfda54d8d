//! The pool hands each request a free instance, or makes it wait its turn.
//!
//! Free instances sit in a stack; a fair semaphore counts them, so waiting
//! requests are served in arrival order and no two requests ever race for the
//! same instance. A request holds its instance through a [`Lease`], which
//! gives it back when dropped, even when the request's future is dropped
//! half-way (a client that disconnects): an instance whose state is unknown
//! is then replaced rather than returned, so the pool never loses a slot.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::Semaphore;
use wasmtime::Engine;

use crate::contract::Tensor;
use crate::error::ApiError;
use crate::instance::{Fault, Instance, InstanceId};
use crate::model::Model;

/// The limits a pool enforces.
#[derive(Debug, Clone)]
pub struct PoolConfig {
    pub instances: usize,
    pub memory_limit: usize,
    /// Longest a request may wait for a free instance before it gets a 503.
    pub queue_timeout: Duration,
    /// Most requests that may wait at once; past it, 503 at once.
    pub max_queue: usize,
}

pub struct Pool {
    engine: Engine,
    model: Arc<Model>,
    config: PoolConfig,
    idle: Mutex<Vec<Instance>>,
    /// One permit per idle instance; tokio's semaphore is FIFO-fair.
    free: Semaphore,
    queued: AtomicUsize,
    busy: AtomicUsize,
    total: AtomicUsize,
    replaced: AtomicU64,
    /// Guest calls made, whatever their outcome.
    calls: AtomicU64,
    next_id: AtomicU64,
}

/// What `/health` reports.
#[derive(Debug, Clone, Copy, serde::Serialize)]
pub struct Status {
    pub total: usize,
    pub busy: usize,
    pub idle: usize,
    pub queued: usize,
    pub replaced: u64,
    pub calls: u64,
}

impl Pool {
    /// Boots `config.instances` instances, logging each as gunicorn logs its
    /// workers.
    pub async fn start(
        engine: Engine,
        model: Arc<Model>,
        config: PoolConfig,
    ) -> wasmtime::Result<Arc<Pool>> {
        let pool = Arc::new(Pool {
            engine,
            model,
            idle: Mutex::new(Vec::with_capacity(config.instances)),
            free: Semaphore::new(0),
            queued: AtomicUsize::new(0),
            busy: AtomicUsize::new(0),
            total: AtomicUsize::new(0),
            replaced: AtomicU64::new(0),
            calls: AtomicU64::new(0),
            next_id: AtomicU64::new(1),
            config,
        });
        for _ in 0..pool.config.instances {
            let started = Instant::now();
            let instance = pool.new_instance().await?;
            tracing::info!(
                instance = instance.id,
                "booted instance {} in {:?}",
                instance.id,
                started.elapsed()
            );
            pool.total.fetch_add(1, Ordering::SeqCst);
            pool.give_back(instance);
        }
        Ok(pool)
    }

    pub fn model(&self) -> &Model {
        &self.model
    }

    pub fn configured_instances(&self) -> usize {
        self.config.instances
    }

    pub fn max_queue(&self) -> usize {
        self.config.max_queue
    }

    pub fn status(&self) -> Status {
        let total = self.total.load(Ordering::SeqCst);
        let busy = self.busy.load(Ordering::SeqCst);
        Status {
            total,
            busy,
            idle: self.free.available_permits(),
            queued: self.queued.load(Ordering::SeqCst),
            replaced: self.replaced.load(Ordering::SeqCst),
            calls: self.calls.load(Ordering::SeqCst),
        }
    }

    async fn new_instance(&self) -> wasmtime::Result<Instance> {
        let id = self.next_id.fetch_add(1, Ordering::SeqCst);
        Instance::new(&self.engine, &self.model.pre, id, self.config.memory_limit).await
    }

    /// Waits for a free instance: at once if one is idle, else in FIFO order
    /// behind the other waiting requests, within the queue's bounds.
    pub async fn acquire(self: &Arc<Self>) -> Result<Lease, ApiError> {
        let permit = match self.free.try_acquire() {
            Ok(permit) => permit,
            Err(_) => {
                let _waiting = QueueSlot::take(self)?;
                match tokio::time::timeout(self.config.queue_timeout, self.free.acquire()).await {
                    Ok(permit) => permit.expect("the pool's semaphore is never closed"),
                    Err(_) => {
                        return Err(ApiError::unavailable(format!(
                            "no instance became free within {:?}; retry later, or start the host \
                             with more --instances",
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
        self.busy.fetch_add(1, Ordering::SeqCst);
        Ok(Lease {
            pool: Arc::clone(self),
            instance: Some(instance),
            replace_because: None,
        })
    }

    fn give_back(&self, instance: Instance) {
        self.idle.lock().unwrap().push(instance);
        self.free.add_permits(1);
    }

    /// Throws an instance away and boots a new one in its place, off the
    /// request's path.
    fn replace(self: &Arc<Self>, old: Instance, cause: String) {
        let pool = Arc::clone(self);
        tokio::spawn(async move {
            let old_id = old.id;
            // Drop first: the pooling allocator's slot is then free for the
            // replacement.
            drop(old);
            let started = Instant::now();
            match pool.new_instance().await {
                Ok(new) => {
                    pool.replaced.fetch_add(1, Ordering::SeqCst);
                    tracing::warn!(
                        old = old_id,
                        new = new.id,
                        "replaced instance {old_id} with {} in {:?}: {cause}",
                        new.id,
                        started.elapsed()
                    );
                    pool.give_back(new);
                }
                Err(err) => {
                    pool.total.fetch_sub(1, Ordering::SeqCst);
                    tracing::error!(
                        old = old_id,
                        "could not replace instance {old_id} ({cause}): {err:#}; \
                         serving with one instance fewer"
                    );
                }
            }
        });
    }
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
    replace_because: Option<String>,
}

impl Lease {
    pub fn instance_id(&self) -> InstanceId {
        self.instance().id
    }

    fn instance(&self) -> &Instance {
        self.instance
            .as_ref()
            .expect("a live lease holds an instance")
    }

    pub async fn predict(
        &mut self,
        inputs: &[Tensor],
        timeout: Duration,
    ) -> Result<Vec<Tensor>, Fault> {
        self.replace_because = Some("the request was cancelled mid-call".into());
        self.pool.calls.fetch_add(1, Ordering::Relaxed);
        let instance = self
            .instance
            .as_mut()
            .expect("a live lease holds an instance");
        let result = instance.predict(inputs, timeout).await;
        self.replace_because = match &result {
            Err(fault) if fault.poisons_instance() => Some(format!("{fault:?}")),
            _ => None,
        };
        result
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        let Some(instance) = self.instance.take() else {
            return;
        };
        self.pool.busy.fetch_sub(1, Ordering::SeqCst);
        match self.replace_because.take() {
            None => self.pool.give_back(instance),
            Some(cause) => self.pool.replace(instance, cause),
        }
    }
}
