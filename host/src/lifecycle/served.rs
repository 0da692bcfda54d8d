//! A served model: one version of one model, with everything it needs to
//! answer requests: its settings, its compiled component, its pool of
//! instances and its metrics. A request resolves its served model once, in
//! the registry, and keeps it to the end; a reload builds a new one beside
//! it and lets this one drain, so nothing inside ever changes models.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::time::Instant;

use crate::core::metrics::ModelMetrics;
use crate::core::scheduler::Scheduler;
use crate::lifecycle::settings::{ModelSettings, Settings};
use crate::model::Model;
use crate::pool::ModelPool;

pub struct ServedModel {
    /// The name clients use: the repository folder's, or the model's own.
    pub name: String,
    /// The version served: the version folder's number, or the model's own.
    pub version: String,
    pub settings: Settings,
    /// The settings as given (model.toml, then the API's config), kept so a
    /// reload of the same source keeps them.
    pub given: ModelSettings,
    pub model: Arc<Model>,
    pub pool: Arc<ModelPool>,
    /// Each request alone, or joined into batches (a model with
    /// `max-batch-size`).
    pub scheduler: Scheduler,
    pub metrics: ModelMetrics,
    pub source: Source,
    pub loaded_at: Instant,
    /// The registry's use clock when a request last resolved this model:
    /// the least recently used resident model is the one with the lowest
    /// (design §11). One word per resident model is all the LRU keeps.
    pub last_used: AtomicU64,
}

/// Where a served model's component came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    /// A file: a model given on the command line or found in the repository.
    /// `digest` is the SHA-256 of its bytes when loaded, so a reload can
    /// tell whether it changed.
    File { path: PathBuf, digest: [u8; 32] },
    /// Bytes sent to the repository API (`file:` parameters).
    Uploaded { digest: [u8; 32] },
}

impl ServedModel {
    /// Memory this model may take at most: its reserved instances times its
    /// cap.
    pub fn reserved_memory(&self) -> u64 {
        self.reserved_instances() as u64 * self.settings.pool.memory_limit as u64
    }

    /// Instances this model holds room for: an elastic pool its maximum
    /// (it grows with demand, and no growth may pass the budget), a fixed
    /// pool what it has now (a resize is checked against the budget first).
    pub fn reserved_instances(&self) -> usize {
        let pool = &self.settings.pool;
        match pool.min_instances {
            Some(_) => pool.max_instances,
            None => self.pool.status().target.max(pool.instances),
        }
    }
}
