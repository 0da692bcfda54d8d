//! A [`Lease`]: the right to use one instance for one request, given back
//! when dropped, even when the request's future is dropped half-way.

use super::*;

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
    /// A lease of `instance`, which the pool has counted as busy.
    pub(super) fn new(pool: Arc<Pool<B>>, instance: B::Worker) -> Self {
        Lease {
            pool,
            instance: Some(instance),
            replace_because: None,
            in_call: false,
            call_ended: None,
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
