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
use tracing::Instrument;

use crate::core::batch;
use crate::core::error::{Error, Kind};
use crate::core::metrics::ModelMetrics;
use crate::core::protocol::{self, Inference};
use crate::core::scheduler::Scheduler;
use crate::lifecycle::served::ServedModel;
use crate::pool::{Lease, ModelBoot};
use crate::runtime::contract::Tensor;
use crate::runtime::instance::{Fault, InstanceId};
use crate::telemetry::spans;

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
    match &served.scheduler {
        // Boxed: the batcher's future is the larger, and only batching
        // models pay for it; every request's future is moved whole.
        Scheduler::Batching(batcher) => {
            Box::pin(batch::run(served, batcher, inference, deadline)).await
        }
        Scheduler::Direct => run_alone(served, inference, deadline).await,
    }
}

/// Runs a request in a call of its own.
pub(crate) async fn run_alone(
    served: &ServedModel,
    inference: &Inference,
    deadline: Option<Deadline>,
) -> Result<Answer, Error> {
    let lease = acquire(served, deadline).instrument(spans::queue()).await?;
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
    let (limit, client) = call_limit(served.settings.timeout, deadline, Instant::now());
    if limit.is_zero() {
        let d = client.expect("only a client's deadline can have passed");
        return Err(d.passed("before the model was called").served_by(instance));
    }
    let span = spans::guest_call(&served.name, &served.version, instance);
    let outputs = lease
        .predict(&inference.inputs, &inference.model_parameters(), limit)
        .instrument(span.clone())
        .await;
    spans::outcome(&span, outputs.as_ref().map_or_else(Fault::kind, |_| "ok"));
    let outputs = outputs.map_err(|fault| fault_error(fault, client).served_by(instance))?;
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

/// How long a call may run: the model's limit, or what is left of the
/// client's deadline when that leaves less (and then that deadline, which
/// is the one a timeout is reported against).
fn call_limit(
    model_limit: Duration,
    deadline: Option<Deadline>,
    now: Instant,
) -> (Duration, Option<Deadline>) {
    // The client's deadline binds when it leaves less than the model's.
    match deadline.filter(|d| d.at.saturating_duration_since(now) < model_limit) {
        Some(d) => (d.at.saturating_duration_since(now), Some(d)),
        None => (model_limit, None),
    }
}

/// The error for a guest's fault: a timeout under the client's deadline is
/// the client's, every other fault is the model's.
fn fault_error(fault: Fault, client: Option<Deadline>) -> Error {
    match (fault, client) {
        (Fault::Timeout(_), Some(d)) => d.passed("and the model was stopped"),
        (fault, _) => Error::from(fault),
    }
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

#[cfg(test)]
mod tests {
    use std::future::Future;
    use std::sync::Arc;
    use std::task::{Context, Poll, Waker};
    use std::time::Duration;

    use tokio::time::Instant;

    use super::{Deadline, Measured, Recorder, call_limit, fault_error};
    use crate::core::error::{Error, Kind};
    use crate::core::metrics::{Metrics, ModelMetrics};
    use crate::runtime::instance::Fault;

    const MS: Duration = Duration::from_millis(1);

    #[test]
    fn a_request_without_a_client_limit_has_no_deadline_and_with_several_the_tightest() {
        let arrived = Instant::now();
        assert!(Deadline::tightest(arrived, &[]).is_none());
        assert!(Deadline::tightest(arrived, &[None, None]).is_none());
        let d = Deadline::tightest(arrived, &[Some(300 * MS), None, Some(200 * MS)]).unwrap();
        assert_eq!(d.limit, 200 * MS);
        assert_eq!(d.at, arrived + 200 * MS);
    }

    #[test]
    fn a_passed_client_deadline_is_a_timeout_that_says_the_client_set_it() {
        let d = Deadline::tightest(Instant::now(), &[Some(200 * MS)]).unwrap();
        let err = d.passed("while it waited for an instance");
        assert_eq!(err.kind, Kind::DeadlineExceeded);
        assert_eq!(err.outcome(), "timeout");
        assert_eq!(
            err.message,
            "the request's deadline of 200ms (set by the client) passed while it waited for an instance"
        );
    }

    #[test]
    fn a_call_runs_under_the_models_limit_unless_the_client_leaves_less() {
        let now = Instant::now();
        let model = Duration::from_secs(30);
        let (limit, client) = call_limit(model, None, now);
        assert_eq!(limit, model);
        assert!(client.is_none());
        // A looser client deadline changes nothing, and is not the one reported.
        let loose = Deadline::tightest(now, &[Some(Duration::from_secs(60))]);
        assert_eq!(call_limit(model, loose, now).0, model);
        assert!(call_limit(model, loose, now).1.is_none());
        // A tighter one binds with what is left of it.
        let tight = Deadline::tightest(now, &[Some(200 * MS)]);
        let (limit, client) = call_limit(model, tight, now + 50 * MS);
        assert_eq!(limit, 150 * MS);
        assert_eq!(client.unwrap().limit, 200 * MS);
        // Once it has passed, nothing is left: the model is not called.
        let (limit, client) = call_limit(model, tight, now + 250 * MS);
        assert!(limit.is_zero());
        assert!(client.is_some());
    }

    #[test]
    fn a_timeout_under_the_clients_deadline_is_the_clients_and_every_other_fault_the_models() {
        let client = Deadline::tightest(Instant::now(), &[Some(100 * MS)]);
        let err = fault_error(Fault::Timeout(100 * MS), client);
        assert_eq!(err.kind, Kind::DeadlineExceeded);
        assert!(
            err.message
                .contains("(set by the client) passed and the model was stopped")
        );
        let err = fault_error(Fault::Timeout(Duration::from_secs(30)), None);
        assert_eq!(err.kind, Kind::DeadlineExceeded);
        assert!(err.message.contains("raise --timeout"), "{}", err.message);
        let cases = [
            (Fault::Trap("unreachable".into()), Kind::Trap, "trap"),
            (Fault::Failed("no".into()), Kind::ModelFailed, "model_error"),
            (
                Fault::InvalidInput("bad".into()),
                Kind::BadInput,
                "bad_input",
            ),
        ];
        for (fault, kind, outcome) in cases {
            let err = fault_error(fault, client);
            assert_eq!(
                (err.kind, err.outcome()),
                (kind, outcome),
                "{}",
                err.message
            );
        }
    }

    fn model_metrics() -> ModelMetrics {
        Arc::new(Metrics::new()).for_model("m", "1", false)
    }

    /// The model's request counts by outcome, from the Prometheus text.
    fn counted(metrics: &ModelMetrics, outcome: &str) -> f64 {
        let series = format!(
            "wasm_host_inference_requests_total{{model=\"m\",version=\"1\",outcome=\"{outcome}\"}} "
        );
        let text = metrics.host().render();
        text.lines()
            .find_map(|l| l.strip_prefix(&series)?.trim().parse().ok())
            .unwrap_or_else(|| panic!("no {series} in\n{text}"))
    }

    fn measured<'a, F>(metrics: &'a ModelMetrics, inference: F) -> Measured<'a, F> {
        let started = std::time::Instant::now();
        metrics.request_begins(started);
        Measured {
            inference,
            recorder: Recorder {
                metrics,
                started,
                recorded: false,
            },
        }
    }

    fn poll_once<F: Future>(future: std::pin::Pin<&mut F>) -> Poll<F::Output> {
        future.poll(&mut Context::from_waker(Waker::noop()))
    }

    #[test]
    fn every_request_is_counted_once_under_its_outcome() {
        let metrics = model_metrics();
        let ok = std::pin::pin!(measured(&metrics, async { Ok::<_, Error>(()) }));
        assert!(poll_once(ok).is_ready());
        let failed = std::pin::pin!(measured(&metrics, async {
            Err::<(), _>(Error::new(Kind::Trap, "trapped"))
        }));
        assert!(poll_once(failed).is_ready());
        assert_eq!(counted(&metrics, "success"), 1.0);
        assert_eq!(counted(&metrics, "trap"), 1.0);
        assert_eq!(counted(&metrics, "cancelled"), 0.0);
    }

    #[test]
    fn a_request_dropped_before_its_answer_is_counted_as_cancelled() {
        let metrics = model_metrics();
        {
            let mut left = Box::pin(measured(
                &metrics,
                std::future::pending::<Result<(), Error>>(),
            ));
            assert!(poll_once(left.as_mut()).is_pending());
        }
        assert_eq!(counted(&metrics, "cancelled"), 1.0);
        assert_eq!(counted(&metrics, "success"), 0.0);
    }
}
