//! What the registry's log lines say about a model: its tensors, its pool,
//! its batching, and what to try when its instances cannot be made.

use crate::lifecycle::settings::BatchConfig;
use crate::pool::PoolConfig;

pub(super) fn describe(specs: &[crate::runtime::contract::TensorSpec]) -> String {
    let described: Vec<String> = specs
        .iter()
        .map(|s| format!("{} {} {:?}", s.name, s.datatype, s.shape))
        .collect();
    described.join(", ")
}

/// "8 instances", or for an elastic pool "elastic, 0 to 8 instances (idle
/// timeout 60s)".
pub(super) fn describe_pool(pool: &PoolConfig) -> String {
    match pool.min_instances {
        None => format!("{} instances", pool.instances),
        Some(min) => format!(
            "elastic, {min} to {} instances (idle timeout {:?})",
            pool.max_instances, pool.idle_timeout
        ),
    }
}

/// ", batches of up to 16 rows (queue delay 500µs, preferred 4, 8)", or
/// nothing for a model that does not batch.
pub(super) fn describe_batching(batching: Option<&BatchConfig>) -> String {
    let Some(b) = batching else {
        return String::new();
    };
    let mut text = format!(
        ", batches of up to {} rows (queue delay {:?}",
        b.max_batch_size, b.max_queue_delay
    );
    if !b.preferred_batch_sizes.is_empty() {
        let sizes: Vec<String> = b
            .preferred_batch_sizes
            .iter()
            .map(usize::to_string)
            .collect();
        text.push_str(&format!(", preferred {}", sizes.join(", ")));
    }
    text.push(')');
    text
}

/// What to try when instances cannot be made: usually the model's memory
/// limit, but with thousands of instances the kernel's cap on a process's
/// memory mappings (each instance maps a few regions; the pool's stacks two
/// per slot) runs out first, and then the mmap fails with ENOMEM too.
pub(super) fn out_of_memory_hint() -> String {
    let mappings = std::fs::read_to_string("/proc/self/maps").map(|m| m.lines().count());
    let most = crate::runtime::engine::max_map_count();
    match (mappings, most) {
        (Ok(mappings), Some(most)) if mappings * 10 >= most * 9 => format!(
            "this process has {mappings} memory mappings of the kernel's vm.max_map_count \
             {most}: raise it (sysctl -w vm.max_map_count=262144) or serve fewer instances"
        ),
        _ => "if it ran out of memory, raise its memory-limit".into(),
    }
}
