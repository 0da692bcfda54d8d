//! Dynamic batching: requests to one model that wait for an instance at the
//! same time run as one guest call, their inputs concatenated along
//! dimension 0, and each gets its own rows of the outputs back.
//!
//! There is no scheduler task. Every request joins its model's list of
//! waiting requests and then waits for an instance exactly as it would
//! unbatched, in the pool's FIFO queue. The request that gets an instance
//! leads: it takes the compatible requests still waiting, up to
//! `max-batch-size` rows, and while its batch is short of a preferred size
//! and `max-queue-delay` allows, keeps the instance and lets new arrivals
//! join. The requests it takes stop waiting for an instance and wait for
//! their rows. So under load, when every instance is busy, batches form by
//! themselves from the queue; with instances free and no delay, a request
//! runs at once, alone, as it would unbatched.
//!
//! The promise that one request's fault never fails another: a batch that
//! fails in any way (a trap, its deadline, the memory cap, an error the
//! model returns, outputs that break the contract) answers none of its
//! requests. Each is re-run alone on an instance of its own, so only the
//! request that causes the fault fails, with its own status. A batch's
//! call runs in a task of its own, so a leader whose client leaves does
//! not take its batch-mates' answers with it, and a request whose client
//! leaves before its batch runs is left out of it.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use serde_json::{Map, Value};
use tokio::sync::{Notify, oneshot};
use tokio::time::Instant;
use tracing::Instrument;

use crate::core::error::Error;
use crate::core::infer::{self, Answer, Deadline};
use crate::core::protocol::Inference;
use crate::lifecycle::served::ServedModel;
use crate::lifecycle::settings::BatchConfig;
use crate::pool::{Lease, ModelBoot};
use crate::runtime::contract::{Metadata, Tensor};
use crate::runtime::instance::InstanceId;
use crate::telemetry::spans;

mod execute;
mod rows;
mod wake;

use execute::{answered, call_alone, execute};
use wake::{wake_at, wake_up, woke_up_after};

impl BatchConfig {
    /// Whether a batch of `rows` should go now rather than wait for more.
    fn complete(&self, rows: usize) -> bool {
        rows >= self.max_batch_size || self.preferred_batch_sizes.contains(&rows)
    }
}

/// Checks at load that a model can be batched: every input and output has
/// a leading -1 (any size), the dimension requests are joined along and
/// outputs split along.
pub fn check_batchable(metadata: &Metadata, config: &BatchConfig) -> Result<(), String> {
    for (kind, specs) in [("input", &metadata.inputs), ("output", &metadata.outputs)] {
        if let Some(spec) = specs.iter().find(|s| s.shape.first() != Some(&-1)) {
            return Err(format!(
                "max-batch-size = {} needs every input and output to have a leading -1 (batch) \
                 dimension, and {kind} {:?} has shape {:?}; leave max-batch-size out (or set it \
                 to 0) for this model",
                config.max_batch_size, spec.name, spec.shape
            ));
        }
    }
    Ok(())
}

/// A model's batcher: its waiting requests and the batches being formed.
pub struct Batcher {
    pub config: BatchConfig,
    queue: Mutex<Queue>,
    ids: AtomicU64,
}

#[derive(Default)]
struct Queue {
    /// Requests waiting for an instance and not yet in a batch, oldest first.
    waiting: VecDeque<Member>,
    /// Batches whose leader holds an instance while it waits for more
    /// requests (`max-queue-delay`).
    forming: Vec<Forming>,
}

impl Queue {
    /// Takes a request out of the waiting list; `false` if a leader took it.
    fn withdraw(&mut self, id: u64) -> bool {
        let at = self.waiting.iter().position(|m| m.id == id);
        at.and_then(|at| self.waiting.remove(at)).is_some()
    }
}

struct Forming {
    leader: u64,
    key: Key,
    rows: usize,
    joined: Vec<Member>,
    /// Wakes the leader when the batch is complete.
    complete: Arc<Notify>,
}

/// A request in a batch, or waiting for one.
struct Member {
    id: u64,
    key: Key,
    rows: usize,
    inputs: Arc<[Tensor]>,
    arrived: Instant,
    /// Dropped when a leader takes the request into its batch: the request
    /// then stops waiting for an instance.
    taken: Option<oneshot::Sender<()>>,
    /// Its rows of the outputs. Dropped unsent when the batch fails: the
    /// request then runs alone.
    reply: oneshot::Sender<Rows>,
    /// The request's span, which its batch links to (disabled when traces
    /// are off).
    span: tracing::Span,
}

/// A request's share of a batch's outputs.
struct Rows {
    outputs: Vec<Tensor>,
    instance: InstanceId,
}

/// What requests must agree on to share a call: what the model computes
/// on, that is the inputs' shapes but for dimension 0 and the parameters the
/// model receives. Which outputs a request wants and how they are encoded
/// (JSON or binary, HTTP or gRPC, classification) are applied to its own
/// rows afterwards, so they do not keep requests apart.
#[derive(Debug, Clone, PartialEq)]
struct Key {
    inner_shapes: Vec<Vec<u64>>,
    parameters: Map<String, Value>,
}

impl Key {
    fn of(inference: &Inference) -> Key {
        Key {
            inner_shapes: inference
                .inputs
                .iter()
                .map(|t| t.shape[1..].to_vec())
                .collect(),
            parameters: inference.parameters.clone(),
        }
    }
}

impl Batcher {
    pub fn new(config: BatchConfig) -> Batcher {
        Batcher {
            config,
            queue: Mutex::default(),
            ids: AtomicU64::new(0),
        }
    }

    /// The rows a request brings to a batch: its inputs' common dimension
    /// 0, from 1 to `max-batch-size`. `None`: it runs alone (inputs that
    /// disagree on dimension 0, no rows, or more than a batch holds).
    fn rows(&self, inference: &Inference) -> Option<usize> {
        let mut leading = inference.inputs.iter().map(|t| t.shape.first().copied());
        let rows = leading.next()??;
        let rows = usize::try_from(rows).ok()?;
        let agree = leading.all(|r| r == Some(rows as u64));
        (agree && (1..=self.config.max_batch_size).contains(&rows)).then_some(rows)
    }

    /// Adds a request: into a forming batch it fits (`true`), or to the
    /// waiting list.
    fn enqueue(&self, mut member: Member) -> bool {
        let max = self.config.max_batch_size;
        let mut queue = self.queue.lock().unwrap();
        let forming = queue
            .forming
            .iter_mut()
            .find(|f| f.key == member.key && f.rows + member.rows <= max);
        match forming {
            Some(forming) => {
                forming.rows += member.rows;
                if self.config.complete(forming.rows) {
                    forming.complete.notify_one();
                }
                member.taken = None;
                forming.joined.push(member);
                true
            }
            None => {
                queue.waiting.push_back(member);
                false
            }
        }
    }

    /// Takes a request out of the waiting list; `false` if a leader took it.
    fn withdraw(&self, id: u64) -> bool {
        self.queue.lock().unwrap().withdraw(id)
    }

    /// Removes a request that leaves (its client gone, or done) from
    /// wherever it still is, under one lock.
    fn leave(&self, id: u64) {
        let mut queue = self.queue.lock().unwrap();
        if queue.withdraw(id) {
            return;
        }
        for forming in &mut queue.forming {
            if let Some(at) = forming.joined.iter().position(|m| m.id == id) {
                let member = forming.joined.remove(at);
                forming.rows -= member.rows;
                return;
            }
        }
    }

    /// The leader `id`, holding an instance, takes itself and the
    /// compatible waiting requests: up to `max-batch-size` rows, cut to the
    /// largest preferred size they reach if the whole is not one. If the
    /// batch is short and its delay not up, it is registered as forming in
    /// the same step, so that no request arriving meanwhile can miss it:
    /// the third value wakes its leader. `None`: another leader took `id`
    /// first.
    fn gather(&self, id: u64) -> Option<(Vec<Member>, usize, Option<Arc<Notify>>)> {
        let config = &self.config;
        let mut queue = self.queue.lock().unwrap();
        let at = queue.waiting.iter().position(|m| m.id == id)?;
        let leader = queue.waiting.remove(at).expect("found above");
        let mut rows = leader.rows;
        let mut picked = Vec::new();
        let mut sizes = Vec::new();
        for (i, member) in queue.waiting.iter().enumerate() {
            if rows >= config.max_batch_size {
                break;
            }
            let fits = rows + member.rows <= config.max_batch_size;
            if fits && member.key == leader.key && !member.reply.is_closed() {
                rows += member.rows;
                picked.push(i);
                sizes.push(rows);
            }
        }
        if !config.preferred_batch_sizes.is_empty() && !config.complete(rows) {
            let preferred = |n: &usize| config.preferred_batch_sizes.contains(n);
            if let Some(last) = sizes.iter().rposition(preferred) {
                picked.truncate(last + 1);
                rows = sizes[last];
            } else if preferred(&leader.rows) {
                picked.clear();
                rows = leader.rows;
            }
        }
        let mut batch = Vec::with_capacity(picked.len() + 1);
        batch.push(leader);
        let first_taken = batch.len();
        for &i in picked.iter().rev() {
            let mut member = queue.waiting.remove(i).expect("picked above");
            member.taken = None;
            batch.push(member);
        }
        batch[first_taken..].reverse();
        let until = batch[0].arrived + config.max_queue_delay;
        let forming = (!config.complete(rows) && Instant::now() < until).then(|| {
            let complete = Arc::new(Notify::new());
            queue.forming.push(Forming {
                leader: id,
                key: batch[0].key.clone(),
                rows,
                joined: Vec::new(),
                complete: Arc::clone(&complete),
            });
            complete
        });
        Some((batch, rows, forming))
    }

    /// Holds the leader's instance while requests join its forming batch,
    /// until the batch is complete (`complete` notified) or `until`.
    async fn wait_for_mates(
        &self,
        batch: &mut Vec<Member>,
        rows: &mut usize,
        until: Instant,
        complete: Arc<Notify>,
    ) {
        let leader = batch[0].id;
        // If the leader's client leaves now, its forming batch goes with
        // it and those who joined run alone.
        let _abandon = Abandon {
            batcher: self,
            leader,
        };
        let left = until.saturating_duration_since(Instant::now());
        let fire_at = until - wake_up().min(left);
        wake_at(fire_at, Arc::clone(&complete));
        complete.notified().await;
        woke_up_after(fire_at);
        let formed = self
            .take_forming(leader)
            .expect("only its leader removes it");
        batch.extend(formed.joined);
        *rows = formed.rows;
    }

    fn take_forming(&self, leader: u64) -> Option<Forming> {
        let mut queue = self.queue.lock().unwrap();
        let at = queue.forming.iter().position(|f| f.leader == leader)?;
        Some(queue.forming.swap_remove(at))
    }
}

/// Removes a request from the batcher when it leaves.
struct Leave<'a> {
    batcher: &'a Batcher,
    id: u64,
}

impl Drop for Leave<'_> {
    fn drop(&mut self) {
        self.batcher.leave(self.id);
    }
}

/// Removes a forming batch whose leader left; its members run alone.
struct Abandon<'a> {
    batcher: &'a Batcher,
    leader: u64,
}

impl Drop for Abandon<'_> {
    fn drop(&mut self) {
        drop(self.batcher.take_forming(self.leader));
    }
}

/// Runs a request as part of a batch, or alone if it cannot join one.
pub async fn run(
    served: &Arc<ServedModel>,
    batcher: &Batcher,
    inference: &Inference,
    deadline: Option<Deadline>,
) -> Result<Answer, Error> {
    let Some(rows) = batcher.rows(inference) else {
        return infer::run_alone(served, inference, deadline).await;
    };
    // With no queue delay, a request that finds an instance idle would lead
    // a batch of itself alone: nobody waits while an instance is free. It
    // runs at once, without the batcher's bookkeeping.
    if batcher.config.max_queue_delay.is_zero()
        && let Some(lease) = served.pool.try_acquire()
    {
        return call_alone(served, lease, rows, inference, deadline).await;
    }
    let (reply, answer) = oneshot::channel();
    let (taken, taken_rx) = oneshot::channel();
    let id = batcher.ids.fetch_add(1, Ordering::Relaxed);
    let member = Member {
        id,
        key: Key::of(inference),
        rows,
        inputs: Arc::clone(&inference.inputs),
        arrived: Instant::now(),
        taken: Some(taken),
        reply,
        span: spans::current(),
    };
    let _leave = Leave { batcher, id };
    if batcher.enqueue(member) {
        return answered(answer, served, inference, deadline).await;
    }
    // Until a leader takes it into a batch, or it gets an instance and leads.
    let waited = async {
        tokio::select! {
            biased;
            _ = taken_rx => None,
            lease = infer::acquire(served, deadline) => Some(lease),
        }
    }
    .instrument(spans::queue())
    .await;
    match waited {
        None => answered(answer, served, inference, deadline).await,
        Some(Ok(lease)) => lead(served, batcher, lease, id, answer, inference, deadline).await,
        // No instance in time, unless a leader took it meanwhile.
        Some(Err(err)) if batcher.withdraw(id) => Err(err),
        Some(Err(_)) => answered(answer, served, inference, deadline).await,
    }
}

/// The request `id` holds an instance: it forms a batch and runs it.
async fn lead(
    served: &Arc<ServedModel>,
    batcher: &Batcher,
    lease: Lease<ModelBoot>,
    id: u64,
    answer: oneshot::Receiver<Rows>,
    inference: &Inference,
    deadline: Option<Deadline>,
) -> Result<Answer, Error> {
    let Some((mut batch, mut rows, forming)) = batcher.gather(id) else {
        drop(lease);
        return answered(answer, served, inference, deadline).await;
    };
    if let Some(complete) = forming {
        let until = batch[0].arrived + batcher.config.max_queue_delay;
        batcher
            .wait_for_mates(&mut batch, &mut rows, until, complete)
            .await;
    }
    if batch.len() == 1 {
        return call_alone(served, lease, rows, inference, deadline).await;
    }
    let parameters = inference.model_parameters();
    tokio::spawn(execute(Arc::clone(served), lease, batch, parameters));
    answered(answer, served, inference, deadline).await
}

#[cfg(test)]
mod tests;
