//! Triton's extensions to the Open Inference Protocol that its clients and
//! tools call: model configuration (`GET /v2/models/{m}/config`) and
//! statistics (`GET /v2/models[/{m}[/versions/{v}]]/stats`), in Triton's
//! JSON shapes, so that `perf_analyzer` and tritonclient's
//! `get_model_config` / `get_inference_statistics` work unchanged. The
//! trace and logging extensions are in [`crate::edge::telemetry`].

use std::sync::Arc;
use std::sync::atomic::Ordering;

use serde_json::{Value, json};

use crate::lifecycle::residency::Described;
use crate::lifecycle::served::ServedModel;
use crate::lifecycle::settings::Settings;
use crate::runtime::contract::{Datatype, TensorSpec};

/// The extensions `GET /v2` advertises.
pub const EXTENSIONS: [&str; 7] = [
    "binary_tensor_data",
    "classification",
    "model_repository",
    "model_configuration",
    "statistics",
    "trace",
    "logging",
];

/// Triton's `TYPE_*` name for a datatype, as model configs spell it.
pub fn config_type(datatype: Datatype) -> &'static str {
    match datatype {
        Datatype::Bool => "TYPE_BOOL",
        Datatype::Uint8 => "TYPE_UINT8",
        Datatype::Uint16 => "TYPE_UINT16",
        Datatype::Uint32 => "TYPE_UINT32",
        Datatype::Uint64 => "TYPE_UINT64",
        Datatype::Int8 => "TYPE_INT8",
        Datatype::Int16 => "TYPE_INT16",
        Datatype::Int32 => "TYPE_INT32",
        Datatype::Int64 => "TYPE_INT64",
        Datatype::Fp16 => "TYPE_FP16",
        Datatype::Fp32 => "TYPE_FP32",
        Datatype::Fp64 => "TYPE_FP64",
        Datatype::Bytes => "TYPE_STRING",
    }
}

/// A model's configuration, as Triton writes it (a registered model's,
/// under `--load on-demand`, without loading it). A model that does
/// not batch has `max_batch_size` 0 and `dims` are its full shapes, the
/// batch dimension included (-1 = any size); one that batches has its
/// `max-batch-size`, `dims` without the batch dimension, and a
/// `dynamic_batching` block, so Triton's clients (perf_analyzer's `-b`)
/// send batches as they would to Triton.
pub fn config(served: &Described) -> Value {
    let skip = usize::from(served.settings.batching.is_some());
    let tensors = |specs: &[TensorSpec]| -> Vec<Value> {
        specs
            .iter()
            .map(|s| json!({ "name": s.name, "data_type": config_type(s.datatype), "dims": s.shape[skip..] }))
            .collect()
    };
    let meta = &served.metadata;
    let mut config = json!({
        "name": served.name,
        "platform": "wasm-host",
        "backend": "wasm-host",
        "version_policy": { "specific": { "versions": [served.version] } },
        "max_batch_size": max_batch_size(&served.settings),
        "input": tensors(&meta.inputs),
        "output": tensors(&meta.outputs),
        "instance_group": [{
            "name": served.name,
            "kind": "KIND_CPU",
            "count": served.instances,
        }],
        "parameters": config_parameters(&served.settings)
            .into_iter()
            .map(|(name, value)| (name.to_owned(), json!({ "string_value": value })))
            .collect::<serde_json::Map<_, _>>(),
    });
    if let Some(b) = &served.settings.batching {
        config["dynamic_batching"] = json!({
            "preferred_batch_size": b.preferred_batch_sizes,
            "max_queue_delay_microseconds": b.max_queue_delay.as_micros() as u64,
        });
    }
    config
}

/// Triton's `max_batch_size`: 0 for a model that does not batch.
pub fn max_batch_size(settings: &Settings) -> usize {
    settings.batching.as_ref().map_or(0, |b| b.max_batch_size)
}

/// The model's settings, as the `parameters` of its configuration.
pub fn config_parameters(settings: &Settings) -> [(&'static str, String); 4] {
    let pool = &settings.pool;
    [
        ("memory_limit", pool.memory_limit.to_string()),
        ("timeout_ms", settings.timeout.as_millis().to_string()),
        ("max_queue", pool.max_queue.to_string()),
        (
            "queue_timeout_ms",
            pool.queue_timeout.as_millis().to_string(),
        ),
    ]
}

/// A count and its total time, as Triton's statistics report them.
#[derive(Debug, Clone, Copy, serde::Serialize)]
pub struct Duration {
    pub count: u64,
    pub ns: u64,
}

/// One model's statistics, whichever protocol reports them.
pub struct Statistics {
    pub name: String,
    pub version: String,
    /// Milliseconds since the epoch, 0 if none.
    pub last_inference: u64,
    pub inference_count: u64,
    pub execution_count: u64,
    pub success: Duration,
    pub fail: Duration,
    pub queue: Duration,
    pub compute_infer: Duration,
    /// wasm-host does not split a call into input, infer and output
    /// steps: all of its time is "infer", and the other two count the same
    /// calls at 0 ns (perf_analyzer requires equal counts).
    pub untimed: Duration,
    /// For a model that batches: calls by their rows, and their time.
    pub batches: Vec<(u64, Duration)>,
}

/// A served model's statistics now.
pub fn statistics(served: &ServedModel) -> Statistics {
    let stats = &served.metrics.stats;
    let load = |n: &std::sync::atomic::AtomicU64| n.load(Ordering::Relaxed);
    let timed = |t: &crate::core::metrics::Timed| Duration {
        count: load(&t.count),
        ns: load(&t.ns),
    };
    Statistics {
        name: served.name.clone(),
        version: served.version.clone(),
        last_inference: load(&stats.last_inference_ms),
        inference_count: load(&stats.success.count),
        execution_count: load(&stats.executions),
        success: timed(&stats.success),
        fail: timed(&stats.fail),
        queue: timed(&stats.queue),
        compute_infer: timed(&stats.compute_infer),
        untimed: Duration {
            count: load(&stats.compute_infer.count),
            ns: 0,
        },
        batches: stats
            .batches
            .lock()
            .unwrap()
            .iter()
            .map(|(&rows, &(count, ns))| (rows, Duration { count, ns }))
            .collect(),
    }
}

/// Triton's statistics response for these models.
pub fn stats(models: &[Arc<ServedModel>]) -> Value {
    let model_stats: Vec<Value> = models
        .iter()
        .map(|served| {
            let s = statistics(served);
            let zero = Duration { count: 0, ns: 0 };
            json!({
                "name": s.name,
                "version": s.version,
                "last_inference": s.last_inference,
                "inference_count": s.inference_count,
                "execution_count": s.execution_count,
                "inference_stats": {
                    "success": s.success,
                    "fail": s.fail,
                    "queue": s.queue,
                    "compute_input": s.untimed,
                    "compute_infer": s.compute_infer,
                    "compute_output": s.untimed,
                    "cache_hit": zero,
                    "cache_miss": zero,
                },
                "batch_stats": s.batches.iter().map(|&(rows, took)| json!({
                    "batch_size": rows,
                    "compute_input": Duration { count: took.count, ns: 0 },
                    "compute_infer": took,
                    "compute_output": Duration { count: took.count, ns: 0 },
                })).collect::<Vec<_>>(),
                "memory_usage": [],
            })
        })
        .collect();
    json!({ "model_stats": model_stats })
}
