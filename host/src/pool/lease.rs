//! A [`Lease`]: the right to use one instance for one request, given back
//! when dropped, even when the request's future is dropped half-way.

use super::*;

/// The right to use one instance for one request.
pub struct Lease<B: Boot> {
    pool: Arc<Pool<B>>,
    instance: Option<B::Worker>,
    state: State,
}

/// Where a lease is in its request: what dropping it now must do with the
/// instance. One enum rather than three fields that had to agree.
enum State {
    /// No call yet, or the last one ended cleanly (at `.0`, which serves as
    /// the time the instance came back: the lease is dropped right after).
    Ready(Option<Instant>),
    /// A call is in flight: a lease dropped now (its request cancelled)
    /// replaces its instance, whose store is in an unknown state.
    Calling,
    /// The last call poisoned the instance (a trap, a deadline, the memory
    /// cap): it is replaced, not returned.
    Poisoned {
        kind: &'static str,
        why: String,
        ended: Instant,
    },
}

impl<B: Boot> Lease<B> {
    /// A lease of `instance`, which the pool has counted as busy.
    pub(super) fn new(pool: Arc<Pool<B>>, instance: B::Worker) -> Self {
        Lease {
            pool,
            instance: Some(instance),
            state: State::Ready(None),
        }
    }

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
        self.state = State::Calling;
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
        self.pool
            .metrics
            .computed(ended.saturating_duration_since(started));
        self.state = match &result {
            Err(fault) if fault.poisons_instance() => State::Poisoned {
                kind: fault.kind(),
                why: fault.to_string(),
                ended,
            },
            _ => State::Ready(Some(ended)),
        };
        result
    }
}

impl<B: Boot> Drop for Lease<B> {
    fn drop(&mut self) {
        if let Some(instance) = self.instance.take() {
            let (why, now) = match std::mem::replace(&mut self.state, State::Ready(None)) {
                State::Ready(ended) => (None, ended.unwrap_or_else(Instant::now)),
                State::Calling => (
                    Some(("cancelled", "the request was cancelled mid-call".into())),
                    Instant::now(),
                ),
                State::Poisoned { kind, why, ended } => (Some((kind, why)), ended),
            };
            self.pool.take_back(instance, why, now);
        }
    }
}
