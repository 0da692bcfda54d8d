//! What the pool needs of an instance ([`Worker`]) and of a model ([`Boot`]):
//! small traits, so the pool's rules are unit-tested with fakes; [`ModelBoot`]
//! and [`Instance`] are the real ones.

use super::*;
use crate::telemetry::spans;
use tracing::Instrument;

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
            &self.model.pre,
            id,
            self.memory_limit,
            recycle_after,
        )
        .instrument(spans::instance_boot(&self.model.metadata.name, id))
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
