//! The one wasmtime `Engine` of the process, configured once for every model.
//!
//! The pooling allocator is the reason instances are cheap: each instance gets a
//! pre-reserved slot whose linear memory is mapped copy-on-write from the
//! component's initial image, so creating or replacing an instance is a few
//! page-table operations, and N instances share one physical copy of the
//! weights until they write to them.

use std::time::Duration;

use anyhow::{Result, anyhow};
use wasmtime::{Config, Engine, InstanceAllocationStrategy, PoolingAllocationConfig};

/// How often the epoch ticks. A running guest yields to the runtime and checks
/// its deadline on every tick, so this bounds both how long one busy guest can
/// hold a runtime thread and how late a deadline can fire.
pub const EPOCH_TICK: Duration = Duration::from_millis(5);

/// Which instance allocator the engine ended up with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Allocator {
    /// Pre-reserved slots with copy-on-write memory images (the fast path).
    Pooling { slots: u32 },
    /// Plain mmap per instance: used where the address space is too small to
    /// reserve the pool (39-bit ARM boards, tight `ulimit -v`).
    OnDemand,
}

impl std::fmt::Display for Allocator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Allocator::Pooling { slots } => write!(f, "pooling allocator, {slots} slots"),
            Allocator::OnDemand => f.write_str("on-demand allocator"),
        }
    }
}

/// Builds the engine. `slots` is the most instances that may be alive at once,
/// counting replacements and a reload's second generation.
pub fn build(slots: u32, memory_limit: usize) -> Result<(Engine, Allocator)> {
    let mut config = Config::new();
    // One ticker thread drives deadlines for every store; cheaper than fuel,
    // which costs a counter update in every loop of the guest.
    config.epoch_interruption(true);
    config.memory_init_cow(true);

    let mut pool = PoolingAllocationConfig::new();
    pool.total_component_instances(slots)
        // A Rust wasip2 component holds a handful of core instances and one or
        // two memories; leave room for components built by other toolchains.
        .total_core_instances(slots * 16)
        .total_memories(slots * 4)
        .total_tables(slots * 4)
        .total_stacks(slots)
        .max_memory_size(memory_limit);
    config.allocation_strategy(InstanceAllocationStrategy::Pooling(pool));
    match Engine::new(&config) {
        Ok(engine) => Ok((engine, Allocator::Pooling { slots })),
        Err(err) => {
            tracing::warn!(
                "pooling allocator unavailable ({err}); falling back to on-demand allocation, \
                 which makes instantiation slower but works with a small address space"
            );
            config.allocation_strategy(InstanceAllocationStrategy::OnDemand);
            let engine = Engine::new(&config)
                .map_err(|err| anyhow!("failed to configure the wasmtime engine: {err}"))?;
            Ok((engine, Allocator::OnDemand))
        }
    }
}

/// Advances the engine's epoch every [`EPOCH_TICK`] for as long as the engine
/// lives. A plain thread, not a tokio task, so a saturated runtime cannot delay
/// the deadlines meant to rescue it.
pub fn start_epoch_ticker(engine: &Engine) {
    let weak = engine.weak();
    std::thread::Builder::new()
        .name("epoch-ticker".into())
        .spawn(move || {
            while let Some(engine) = weak.upgrade() {
                engine.increment_epoch();
                drop(engine);
                std::thread::sleep(EPOCH_TICK);
            }
        })
        .expect("failed to spawn the epoch ticker thread");
}
