//! How a batch runs once formed, and how each request gets its answer:
//! the one guest call on the leader's instance (in a task of its own, so a
//! leader whose client leaves does not take the others' answers with it),
//! its outputs checked and split into each member's rows, and a member
//! whose batch failed or was abandoned run again alone. Apart from the
//! forming in [`super`], which only decides who shares a call.

use std::sync::Arc;

use tokio::sync::oneshot;
use tokio::time::Instant;
use tracing::Instrument;

use super::rows::{concat, split};
use super::{Member, Rows};
use crate::core::error::Error;
use crate::core::infer::{self, Answer, Deadline};
use crate::core::protocol::{self, Inference};
use crate::lifecycle::served::ServedModel;
use crate::pool::{Lease, ModelBoot};
use crate::runtime::instance::Fault;
use crate::telemetry::spans;

/// Runs a request that found no batch-mates, as a batch of its own rows.
pub(super) async fn call_alone(
    served: &ServedModel,
    lease: Lease<ModelBoot>,
    rows: usize,
    inference: &Inference,
    deadline: Option<Deadline>,
) -> Result<Answer, Error> {
    let started = Instant::now();
    let answer = infer::call(served, lease, inference, deadline).await;
    served.metrics.batch_executed(rows, started.elapsed());
    answer
}

/// A request's answer from its batch, within its deadline; if the batch
/// failed or was abandoned, the request runs alone.
pub(super) async fn answered(
    answer: oneshot::Receiver<Rows>,
    served: &Arc<ServedModel>,
    inference: &Inference,
    deadline: Option<Deadline>,
) -> Result<Answer, Error> {
    let rows = match deadline {
        None => answer.await,
        Some(d) => tokio::time::timeout_at(d.at, answer)
            .await
            .map_err(|_| d.passed("while its batch waited or ran"))?,
    };
    match rows {
        Ok(Rows { outputs, instance }) => Ok(Answer {
            outputs: protocol::classify_requested(outputs, inference, &served.model.metadata),
            instance,
        }),
        Err(_) => infer::run_alone(served, inference, deadline).await,
    }
}

/// Runs a batch of two or more requests in one call and hands each its
/// rows; on any failure, hands none, so each runs alone.
pub(super) async fn execute(
    served: Arc<ServedModel>,
    mut lease: Lease<ModelBoot>,
    batch: Vec<Member>,
    parameters: Vec<(String, String)>,
) {
    let leader = batch[0].id;
    // Requests whose clients left (or whose deadlines passed) cost nothing.
    let batch: Vec<Member> = batch.into_iter().filter(|m| !m.reply.is_closed()).collect();
    if batch.is_empty() {
        return;
    }
    let started = Instant::now();
    for member in batch.iter().filter(|m| m.id != leader) {
        served.metrics.queued(started - member.arrived);
    }
    let rows: Vec<usize> = batch.iter().map(|m| m.rows).collect();
    let inputs = concat(&batch);
    let instance = lease.instance_id();
    let (name, version) = (&served.name, &served.version);
    let requests = batch.iter().map(|m| &m.span);
    let span = spans::batch(name, version, requests, rows.iter().sum());
    for member in &batch {
        spans::link(&span, &member.span);
    }
    // Opened inside the batch's span: its child.
    let call = span.in_scope(|| spans::guest_call(name, version, instance));
    let result = lease
        .predict(&inputs, &parameters, served.settings.timeout)
        .instrument(call.clone())
        .instrument(span)
        .await;
    spans::outcome(&call, result.as_ref().map_or_else(Fault::kind, |_| "ok"));
    drop(lease);
    drop(inputs);
    served
        .metrics
        .batch_executed(rows.iter().sum(), started.elapsed());
    let model = &served.model.metadata;
    let split = result
        .map_err(|fault| fault.to_string())
        .and_then(|outputs| {
            protocol::check_outputs(&outputs, model)?;
            split(outputs, &rows, model)
        });
    match split {
        Ok(parts) => {
            for (member, outputs) in batch.into_iter().zip(parts) {
                let _ = member.reply.send(Rows { outputs, instance });
            }
        }
        Err(why) => tracing::info!(
            model = %served.name,
            instance,
            "a batch of {} requests ({} rows) failed on instance {instance}: {why}; each \
             request is run again alone",
            rows.len(),
            rows.iter().sum::<usize>()
        ),
    }
}
