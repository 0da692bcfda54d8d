//! Triton's extensions to the Open Inference Protocol that its clients and
//! tools call: model configuration (`GET /v2/models/{m}/config`) and
//! statistics (`GET /v2/models[/{m}[/versions/{v}]]/stats`), in Triton's
//! JSON shapes, so that `perf_analyzer` and tritonclient's
//! `get_model_config` / `get_inference_statistics` work unchanged.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use serde_json::{Value, json};

use crate::contract::{Datatype, TensorSpec};
use crate::served::ServedModel;

/// The extensions `GET /v2` advertises.
pub const EXTENSIONS: [&str; 4] = [
    "binary_tensor_data",
    "model_repository",
    "model_configuration",
    "statistics",
];

/// Triton's `TYPE_*` name for a datatype, as model configs spell it.
fn config_type(datatype: Datatype) -> &'static str {
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

/// A served model's configuration. wasm-host does not batch across
/// requests, so `max_batch_size` is 0 and `dims` are the full shapes, the
/// batch dimension included (-1 = any size), as Triton writes them for a
/// model without batching.
pub fn config(served: &ServedModel) -> Value {
    let tensors = |specs: &[TensorSpec]| -> Vec<Value> {
        specs
            .iter()
            .map(|s| json!({ "name": s.name, "data_type": config_type(s.datatype), "dims": s.shape }))
            .collect()
    };
    let meta = &served.model.metadata;
    let pool = &served.settings.pool;
    json!({
        "name": served.name,
        "platform": "wasm-host",
        "backend": "wasm-host",
        "version_policy": { "specific": { "versions": [served.version] } },
        "max_batch_size": 0,
        "input": tensors(&meta.inputs),
        "output": tensors(&meta.outputs),
        "instance_group": [{
            "name": served.name,
            "kind": "KIND_CPU",
            "count": served.pool.status().target,
        }],
        "parameters": {
            "memory_limit": { "string_value": pool.memory_limit.to_string() },
            "timeout_ms": { "string_value": served.settings.timeout.as_millis().to_string() },
            "max_queue": { "string_value": pool.max_queue.to_string() },
            "queue_timeout_ms": { "string_value": pool.queue_timeout.as_millis().to_string() },
        },
    })
}

/// Triton's statistics response for these models.
pub fn stats(models: &[Arc<ServedModel>]) -> Value {
    let model_stats: Vec<Value> = models
        .iter()
        .map(|served| {
            let stats = &served.metrics.stats;
            let zero = json!({ "count": 0, "ns": 0 });
            let success = stats.success.count.load(Ordering::Relaxed);
            // wasm-host does not split a call into input, infer and output
            // steps: all of its time is "infer", and the other two count
            // the same calls at 0 ns (perf_analyzer requires equal counts).
            let calls = stats.compute_infer.count.load(Ordering::Relaxed);
            let untimed = json!({ "count": calls, "ns": 0 });
            json!({
                "name": served.name,
                "version": served.version,
                "last_inference": stats.last_inference_ms.load(Ordering::Relaxed),
                "inference_count": success,
                "execution_count": stats.executions.load(Ordering::Relaxed),
                "inference_stats": {
                    "success": stats.success.json(),
                    "fail": stats.fail.json(),
                    "queue": stats.queue.json(),
                    "compute_input": untimed,
                    "compute_infer": stats.compute_infer.json(),
                    "compute_output": untimed,
                    "cache_hit": zero,
                    "cache_miss": zero,
                },
                "batch_stats": [],
                "memory_usage": [],
            })
        })
        .collect();
    json!({ "model_stats": model_stats })
}
