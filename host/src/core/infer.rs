//! One inference, whatever protocol brought it: the core that HTTP
//! ([`crate::edge::http`]) and gRPC ([`crate::edge::grpc`]) share once they have
//! decoded a request into an [`Inference`] and before they encode the
//! outputs in their own form.
//!
//! [`run`] takes a free instance (pool), calls the guest under the tighter
//! of the model's deadline and the client's, checks the outputs against
//! the model's metadata, and applies the classification extension; for a
//! model with `max-batch-size`, it goes through [`crate::core::batch`], which
//! may join it with other requests into one call.
//! [`measured`] records every request in the model's metrics and Triton
//! statistics, whichever edge it came through.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::time::Instant;

use crate::core::batch;
use crate::core::error::{Error, Kind};
use crate::core::metrics::ModelMetrics;
use crate::core::protocol::{self, Inference};
use crate::lifecycle::served::ServedModel;
use crate::pool::{Lease, ModelBoot};
use crate::runtime::contract::Tensor;
use crate::runtime::instance::{Fault, InstanceId};

/// A request's outputs, ready to encode, and the instance that made them.
/// Output i is the one the model's metadata declares i-th.
pub struct Answer {
    pub outputs: Vec<Tensor>,
    pub instance: InstanceId,
}

/// The deadline a client set for its request (Triton's `timeout`
/// parameter, gRPC's `grpc-timeout`), counted from when the request
/// arrived. It can only shorten the model's own `--timeout`.
#[derive(Debug, Clone, Copy)]
pub struct Deadline {
    pub limit: Duration,
    pub(crate) at: Instant,
}

impl Deadline {
    /// The tightest of the limits a client gave, if it gave any.
    pub fn tightest(arrived: Instant, limits: &[Option<Duration>]) -> Option<Deadline> {
        let limit = limits.iter().flatten().min().copied()?;
        Some(Deadline {
            limit,
            at: arrived + limit,
        })
    }

    pub(crate) fn passed(self, when: &str) -> Error {
        Error::new(
            Kind::DeadlineExceeded,
            format!(
                "the request's deadline of {:?} (set by the client) passed {when}",
                self.limit
            ),
        )
    }
}

/// Runs a decoded request on a free instance of `served`, in a batch
/// with others if the model batches.
pub async fn run(
    served: &Arc<ServedModel>,
    inference: &Inference,
    deadline: Option<Deadline>,
) -> Result<Answer, Error> {
    match &served.batcher {
        // Boxed: the batcher's future is the larger, and only batching
        // models pay for it; every request's future is moved whole.
        Some(batcher) => Box::pin(batch::run(served, batcher, inference, deadline)).await,
        None => run_alone(served, inference, deadline).await,
    }
}

/// Runs a request in a call of its own.
pub(crate) async fn run_alone(
    served: &ServedModel,
    inference: &Inference,
    deadline: Option<Deadline>,
) -> Result<Answer, Error> {
    let lease = acquire(served, deadline).await?;
    call(served, lease, inference, deadline).await
}

/// Waits for a free instance, within the client's deadline.
pub(crate) async fn acquire(
    served: &ServedModel,
    deadline: Option<Deadline>,
) -> Result<Lease<ModelBoot>, Error> {
    Ok(match deadline {
        None => served.pool.acquire().await?,
        Some(deadline) => tokio::time::timeout_at(deadline.at, served.pool.acquire())
            .await
            .map_err(|_| deadline.passed("while it waited for an instance"))??,
    })
}

/// Calls the guest with one request's inputs on the instance `lease` holds.
pub(crate) async fn call(
    served: &ServedModel,
    mut lease: Lease<ModelBoot>,
    inference: &Inference,
    deadline: Option<Deadline>,
) -> Result<Answer, Error> {
    let instance = lease.instance_id();
    let model_limit = served.settings.timeout;
    // The client's deadline binds when it leaves less than the model's.
    let client = deadline.filter(|d| d.at.saturating_duration_since(Instant::now()) < model_limit);
    let limit = match client {
        Some(d) => d.at.saturating_duration_since(Instant::now()),
        None => model_limit,
    };
    if limit.is_zero() {
        let d = client.expect("only a client's deadline can have passed");
        return Err(d.passed("before the model was called").served_by(instance));
    }
    let outputs = lease
        .predict(&inference.inputs, &inference.model_parameters(), limit)
        .await
        .map_err(|fault| {
            let err = match (fault, client) {
                (Fault::Timeout(_), Some(d)) => d.passed("and the model was stopped"),
                (fault, _) => Error::from(fault),
            };
            err.served_by(instance)
        })?;
    // Give the instance back before encoding: the next request need not wait.
    drop(lease);
    let metadata = &served.model.metadata;
    protocol::check_outputs(&outputs, metadata)
        .map_err(|why| Error::model_failed(why).served_by(instance))?;
    Ok(Answer {
        outputs: protocol::classify_requested(outputs, inference, metadata),
        instance,
    })
}

/// What a request's failure counts as in the metrics.
pub trait Outcome {
    fn outcome(&self) -> &'static str;
}

impl Outcome for Error {
    fn outcome(&self) -> &'static str {
        Error::outcome(self)
    }
}

/// Counts an inference request as pending while it runs, then records its
/// outcome and duration; a request whose client left before its answer (its
/// future dropped) is recorded as `cancelled`.
///
/// A future of its own rather than an `async fn`: an `async fn` keeps its
/// argument and the future it awaits as two locals, so the HTTP request's
/// state machine held the inference twice (6 KB instead of 3) and moved it
/// on every request (by `-Zprint-type-sizes` and the profile's `memcpy`).
///
/// `arrived` is when the request arrived, read once by the edge for this and
/// for the request's own deadlines.
pub fn measured<F, T, E>(
    served: &ServedModel,
    arrived: std::time::Instant,
    inference: F,
) -> Measured<'_, F>
where
    F: Future<Output = Result<T, E>>,
    E: Outcome,
{
    let metrics = &served.metrics;
    metrics.request_begins(arrived);
    Measured {
        inference,
        recorder: Recorder {
            metrics,
            started: arrived,
            recorded: false,
        },
    }
}

pin_project_lite::pin_project! {
    /// The future [`measured`] returns.
    pub struct Measured<'a, F> {
        #[pin]
        inference: F,
        recorder: Recorder<'a>,
    }
}

impl<F, T, E> Future for Measured<'_, F>
where
    F: Future<Output = Result<T, E>>,
    E: Outcome,
{
    type Output = Result<T, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let result = std::task::ready!(this.inference.poll(cx));
        this.recorder.done(match &result {
            Ok(_) => "success",
            Err(err) => err.outcome(),
        });
        Poll::Ready(result)
    }
}

/// Records a request's outcome once: when it finishes, or as `cancelled`
/// when dropped before that.
struct Recorder<'a> {
    metrics: &'a ModelMetrics,
    started: std::time::Instant,
    recorded: bool,
}

impl Recorder<'_> {
    fn done(&mut self, outcome: &'static str) {
        if !std::mem::replace(&mut self.recorded, true) {
            let ended = std::time::Instant::now();
            self.metrics.request_done(outcome, self.started, ended);
        }
    }
}

impl Drop for Recorder<'_> {
    fn drop(&mut self) {
        self.done("cancelled");
    }
}
