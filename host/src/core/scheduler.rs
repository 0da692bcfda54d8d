//! How a served model's requests reach its instances (Triton's scheduler):
//! each on a free instance of its own, or joined with others into one call
//! by the dynamic batcher ([`crate::core::batch`]). Chosen once, when the
//! model loads, from its settings; [`crate::core::infer::run`] is the one
//! place that tells the two apart.

use crate::core::batch::{self, Batcher};
use crate::lifecycle::settings::BatchConfig;
use crate::runtime::contract::Metadata;

pub enum Scheduler {
    /// Every request is a call of its own.
    Direct,
    /// Requests that wait at the same time are joined into one call of up
    /// to `max-batch-size` rows.
    Batching(Batcher),
}

impl Scheduler {
    /// The scheduler `batching` asks for, or why this model cannot be
    /// batched (an input or output without a leading -1).
    pub fn new(metadata: &Metadata, batching: Option<&BatchConfig>) -> Result<Scheduler, String> {
        Ok(match batching {
            None => Scheduler::Direct,
            Some(config) => {
                batch::check_batchable(metadata, config)?;
                Scheduler::Batching(Batcher::new(config.clone()))
            }
        })
    }
}
