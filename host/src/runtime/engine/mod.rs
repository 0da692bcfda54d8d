//! The one wasmtime `Engine` of the process, configured once for every model.
//!
//! The pooling allocator is the reason instances are cheap: each instance gets a
//! pre-reserved slot whose linear memory is mapped copy-on-write from the
//! component's initial image, so creating or replacing an instance is a few
//! page-table operations, and N instances share one physical copy of the
//! weights until they write to them.
//!
//! Those slots are address space, not memory, and how much each takes is the
//! engine's memory layout (it also shapes the generated code, so a compiled
//! artifact is tied to it):
//! - [`Layout::Wide`] reserves 4 GiB plus a 32 MiB guard per linear memory,
//!   so Cranelift drops bounds checks: wasmtime's default, used on x86-64,
//!   whose 47-bit address space (128 TiB) holds a thousand slots easily;
//! - [`Layout::Compact`] reserves the memory cap rounded up to a power of two
//!   plus a 2 MiB guard, with explicit bounds checks: used on aarch64, where
//!   boards often have 39-bit address spaces (512 GiB), and wherever the wide
//!   pool does not fit (a tight `ulimit -v`).
//!
//! The pool is sized to the instance count and checked against the address
//! space this process can still reserve (the top of the user address space,
//! or `RLIMIT_AS`); a pool that does not fit shrinks, and below
//! [`MIN_POOL_SLOTS`] the engine allocates each instance on demand. A pool
//! that fits the address space but cannot be mapped in one piece (valgrind
//! caps mappings) also falls back to on-demand instances, in the planned
//! layout if one memory's reservation can be mapped. One log line says which
//! was chosen and why.

use std::time::Duration;

use anyhow::{Result, anyhow};
use wasmtime::{Config, Engine, InstanceAllocationStrategy, PoolingAllocationConfig};

/// How often the epoch ticks. A running guest yields to the runtime and checks
/// its deadline on every tick, so this bounds both how long one busy guest can
/// hold a runtime thread and how late a deadline can fire.
pub const EPOCH_TICK: Duration = Duration::from_millis(5);

/// The wide layout's reservation and guard: wasmtime's defaults on 64-bit hosts.
const WIDE_RESERVATION: u64 = 4 << 30;
const WIDE_GUARD: u64 = 32 << 20;
/// The compact layout's guard: constant offsets below it need no bounds check
/// of their own.
const COMPACT_GUARD: u64 = 2 << 20;

/// Per component instance: a Rust wasip2 component holds a handful of core
/// instances and one or two memories; leave room for components built by
/// other toolchains.
const MEMORIES_PER_SLOT: u32 = 4;
const TABLES_PER_SLOT: u32 = 4;
const CORE_INSTANCES_PER_SLOT: u32 = 16;
/// What a slot's stack and tables reserve besides its memories: wasmtime's
/// 2 MiB async stack plus a guard page, and 20,000 table elements of 8 bytes.
const STACK_BYTES: u64 = (2 << 20) + (64 << 10);
const TABLE_BYTES: u64 = 20_000 * 8 + (64 << 10);

/// The pool takes at most this fraction (1/N) of the reservable address
/// space; the rest is for the process: heap, code, thread stacks, caches.
const POOL_SHARE: u64 = 2;
/// A pool smaller than this is not worth it: instances are allocated on demand.
pub const MIN_POOL_SLOTS: u32 = 16;

/// How much address space each linear memory takes, which decides the code
/// Cranelift generates for memory accesses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Layout {
    /// 4 GiB reserved (plus a 32 MiB guard) per memory: no bounds checks.
    Wide,
    /// `reservation` bytes (a power of two at least the memory cap) plus a
    /// 2 MiB guard per memory: explicit bounds checks.
    Compact { reservation: u64 },
}

impl Layout {
    /// The compact layout for instances capped at `memory_limit` bytes: two
    /// caps that round up to the same power of two share one layout (and so
    /// their compiled artifacts).
    pub fn compact(memory_limit: u64) -> Layout {
        let reservation = memory_limit
            .clamp(1 << 20, WIDE_RESERVATION)
            .next_power_of_two();
        Layout::Compact { reservation }
    }

    /// The layout of an engine compiling for `arch` (as in
    /// `std::env::consts::ARCH`) when its address space is not in question:
    /// compact on aarch64, so one artifact loads on 39- and 48-bit boards alike.
    pub fn for_arch(arch: &str, memory_limit: u64) -> Layout {
        if arch == "aarch64" {
            Layout::compact(memory_limit)
        } else {
            Layout::Wide
        }
    }

    fn reservation(self) -> u64 {
        match self {
            Layout::Wide => WIDE_RESERVATION,
            Layout::Compact { reservation } => reservation,
        }
    }

    fn guard(self) -> u64 {
        match self {
            Layout::Wide => WIDE_GUARD,
            Layout::Compact { .. } => COMPACT_GUARD,
        }
    }

    /// The largest linear memory an instance may grow to under this layout:
    /// a model's memory limit cannot be higher.
    pub fn memory_cap(self) -> u64 {
        self.reservation()
    }

    /// The address space one linear memory reserves: what an on-demand
    /// instance maps at once for each of its memories.
    pub fn memory_bytes(self) -> u64 {
        self.reservation() + self.guard()
    }

    /// The address space one pool slot (one component instance) reserves.
    pub fn slot_bytes(self) -> u64 {
        u64::from(MEMORIES_PER_SLOT) * self.memory_bytes()
            + STACK_BYTES
            + u64::from(TABLES_PER_SLOT) * TABLE_BYTES
    }

    /// Sets the layout's tunables. The wide layout leaves wasmtime's defaults
    /// alone, so its artifacts and cache keys are those of a default engine.
    fn apply(self, config: &mut Config) {
        if let Layout::Compact { reservation } = self {
            config
                .memory_reservation(reservation)
                .memory_guard_size(COMPACT_GUARD)
                // On-demand memories never need to grow past the cap.
                .memory_reservation_for_growth(0);
        }
    }
}

impl std::fmt::Display for Layout {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Layout::Wide => f.write_str("4 GiB reservations, bounds checks elided"),
            Layout::Compact { reservation } => write!(
                f,
                "{} reservations, explicit bounds checks",
                bytes(*reservation)
            ),
        }
    }
}

/// Which instance allocator the engine ended up with, and its layout.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Allocator {
    /// Pre-reserved slots with copy-on-write memory images (the fast path).
    Pooling { slots: u32, layout: Layout },
    /// Plain mmap per instance: used where the address space is too small to
    /// reserve a pool (tight `ulimit -v`, small boards with many instances).
    OnDemand { layout: Layout },
}

impl Allocator {
    pub fn layout(&self) -> Layout {
        match *self {
            Allocator::Pooling { layout, .. } | Allocator::OnDemand { layout } => layout,
        }
    }

    /// The most instances alive at once, if the allocator has a limit.
    pub fn slots(&self) -> Option<u32> {
        match *self {
            Allocator::Pooling { slots, .. } => Some(slots),
            Allocator::OnDemand { .. } => None,
        }
    }
}

impl std::fmt::Display for Allocator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Allocator::Pooling { slots, .. } => write!(f, "pooling allocator, {slots} slots"),
            Allocator::OnDemand { .. } => f.write_str("on-demand allocator"),
        }
    }
}

/// The allocator [`build`] will try, and the log line that says why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plan {
    pub allocator: Allocator,
    pub why: String,
}

/// Chooses the layout and allocator for `wanted` slots of instances capped at
/// `memory_limit` bytes, on `arch`, with `space` bytes of address space left
/// to reserve. Pure, so the sizing rules are unit-tested.
pub fn plan(arch: &str, wanted: u32, memory_limit: u64, space: u64) -> Plan {
    let usable = space / POOL_SHARE;
    let need = |layout: Layout| u64::from(wanted) * layout.slot_bytes();
    let sized = |slots: u32, layout: Layout| {
        format!(
            "{slots} slots × {} = {} of {} address space, {layout}",
            bytes(layout.slot_bytes()),
            bytes(u64::from(slots) * layout.slot_bytes()),
            bytes(space)
        )
    };
    let why_compact = match Layout::for_arch(arch, memory_limit) {
        Layout::Wide => {
            if need(Layout::Wide) <= usable {
                return Plan {
                    allocator: Allocator::Pooling {
                        slots: wanted,
                        layout: Layout::Wide,
                    },
                    why: format!("pooling allocator: {}", sized(wanted, Layout::Wide)),
                };
            }
            format!(
                "address space too small for 4 GiB reservations (they need {}, half of what \
                 this process can reserve is {})",
                bytes(need(Layout::Wide)),
                bytes(usable)
            )
        }
        Layout::Compact { .. } => {
            "compact memory layout on aarch64 (fits 39-bit address spaces)".to_owned()
        }
    };
    let layout = Layout::compact(memory_limit);
    let fit = u32::try_from(usable / layout.slot_bytes()).unwrap_or(u32::MAX);
    if fit >= wanted {
        return Plan {
            allocator: Allocator::Pooling {
                slots: wanted,
                layout,
            },
            why: format!(
                "{why_compact}: pooling allocator, {}",
                sized(wanted, layout)
            ),
        };
    }
    if fit >= MIN_POOL_SLOTS {
        return Plan {
            allocator: Allocator::Pooling { slots: fit, layout },
            why: format!(
                "{why_compact}: pooling allocator shrunk to what fits, {} (asked for {wanted} \
                 slots: fewer instances can be loaded)",
                sized(fit, layout)
            ),
        };
    }
    Plan {
        allocator: Allocator::OnDemand { layout },
        why: format!(
            "{why_compact}; address space too small for pooling (it needs {} for {MIN_POOL_SLOTS} \
             slots, half of what this process can reserve is {}): using on-demand instances, {}",
            bytes(u64::from(MIN_POOL_SLOTS) * layout.slot_bytes()),
            bytes(usable),
            layout
        ),
    }
}

/// The common settings of every engine, native or cross-compiling.
fn base_config() -> Config {
    let mut config = Config::new();
    // One ticker thread drives deadlines for every store; cheaper than fuel,
    // which costs a counter update in every loop of the guest.
    config.epoch_interruption(true);
    config.memory_init_cow(true);
    config
}

/// Builds the engine. `slots` is the most instances that may be alive at once,
/// counting replacements and a reload's second generation; `memory_limit` is
/// the cap instances are served with (it sizes the compact layout). Also
/// returns the line that says which allocator was chosen and why, for the
/// caller to log.
pub fn build(slots: u32, memory_limit: usize) -> Result<(Engine, Allocator, String)> {
    let space = reservable_address_space();
    let plan = plan(std::env::consts::ARCH, slots, memory_limit as u64, space);
    let mut config = base_config();
    plan.allocator.layout().apply(&mut config);
    if let Allocator::Pooling { slots, layout } = plan.allocator {
        let mut pool = PoolingAllocationConfig::new();
        pool.total_component_instances(slots)
            .total_core_instances(slots * CORE_INSTANCES_PER_SLOT)
            .total_memories(slots * MEMORIES_PER_SLOT)
            .total_tables(slots * TABLES_PER_SLOT)
            .total_stacks(slots)
            .max_memory_size(usize::try_from(layout.memory_cap()).unwrap_or(usize::MAX));
        config.allocation_strategy(InstanceAllocationStrategy::Pooling(pool));
        match Engine::new(&config) {
            Ok(engine) => return Ok((engine, plan.allocator, plan.why)),
            Err(err) => {
                // The probe said the pool fits, but reserving it failed: the
                // address space is there, a mapping that large is not (valgrind
                // caps each mapping far below it). On-demand instances map each
                // memory on its own, so they keep the planned layout, and its
                // faster code, if one memory's reservation can be mapped; the
                // compact layout otherwise.
                let layout = if can_reserve(layout.memory_bytes()) {
                    layout
                } else {
                    Layout::compact(memory_limit as u64)
                };
                let why = format!(
                    "pooling allocator unavailable ({}): using on-demand instances, {layout}",
                    err.root_cause()
                );
                let mut config = base_config();
                layout.apply(&mut config);
                let engine = Engine::new(&config)
                    .map_err(|err| anyhow!("failed to configure the wasmtime engine: {err}"))?;
                return Ok((engine, Allocator::OnDemand { layout }, why));
            }
        }
    }
    config.allocation_strategy(InstanceAllocationStrategy::OnDemand);
    let engine = Engine::new(&config)
        .map_err(|err| anyhow!("failed to configure the wasmtime engine: {err}"))?;
    Ok((engine, plan.allocator, plan.why))
}

/// An engine that compiles for another machine (`wasm-host compile
/// --target`): it never runs code, so it has no pool; its layout is the one a
/// host of that architecture picks (see [`Layout::for_arch`]).
pub fn build_for_target(triple: &str, memory_limit: usize) -> Result<(Engine, Layout)> {
    let arch = triple.split('-').next().unwrap_or_default();
    let layout = Layout::for_arch(arch, memory_limit as u64);
    let mut config = base_config();
    config.target(triple).map_err(|err| {
        anyhow!("unknown --target {triple:?} ({err}): use e.g. aarch64-unknown-linux-gnu")
    })?;
    layout.apply(&mut config);
    let engine = Engine::new(&config).map_err(|err| {
        anyhow!(
            "this wasm-host cannot compile for {triple} ({}): it compiles for \
             x86_64-unknown-linux-gnu and aarch64-unknown-linux-gnu",
            err.root_cause()
        )
    })?;
    Ok((engine, layout))
}

/// Linux's cap on this process's memory mappings (`vm.max_map_count`,
/// 65,530 by default): the pool's stacks take two each and every live
/// instance a few, so thousands of instances reach it before memory.
pub fn max_map_count() -> Option<usize> {
    std::fs::read_to_string("/proc/sys/vm/max_map_count")
        .ok()?
        .trim()
        .parse()
        .ok()
}

/// The address space this process can still reserve: the top of the user
/// address space (the bit length of the highest address mapped, the stack's:
/// 39 bits on many ARM boards, 47 on x86-64), or `RLIMIT_AS` (`ulimit -v`)
/// less what is mapped already, whichever is smaller. Read, not probed: under
/// qemu-user every page reserved costs bookkeeping memory, so trial mappings
/// of terabytes would take minutes.
pub fn reservable_address_space() -> u64 {
    let maps = std::fs::read_to_string("/proc/self/maps").unwrap_or_default();
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    // SAFETY: getrlimit only writes the struct it is given.
    let limit = unsafe {
        let mut limit = std::mem::zeroed::<libc::rlimit>();
        if libc::getrlimit(libc::RLIMIT_AS, &mut limit) == 0
            && limit.rlim_cur != libc::RLIM_INFINITY
        {
            Some(limit.rlim_cur)
        } else {
            None
        }
    };
    address_space(&maps, &status, limit)
}

/// Whether `bytes` of address space can be reserved in one mapping now
/// (mapped without access or backing, then unmapped at once).
pub fn can_reserve(bytes: u64) -> bool {
    let Ok(len) = usize::try_from(bytes) else {
        return false;
    };
    // SAFETY: a fresh anonymous mapping with no access touches no existing
    // memory, and it is unmapped before anything else can see it.
    unsafe {
        let at = libc::mmap(
            std::ptr::null_mut(),
            len,
            libc::PROT_NONE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE,
            -1,
            0,
        );
        if at == libc::MAP_FAILED {
            return false;
        }
        libc::munmap(at, len);
    }
    true
}

/// [`reservable_address_space`] from the text of `/proc/self/maps` and
/// `/proc/self/status` and the soft `RLIMIT_AS`.
fn address_space(maps: &str, status: &str, limit: Option<u64>) -> u64 {
    let highest = maps
        .lines()
        .filter_map(|line| line.split('-').nth(1)?.split_whitespace().next())
        .filter_map(|end| u64::from_str_radix(end, 16).ok())
        // Not the kernel's [vsyscall] page at the top of the 64-bit space.
        .filter(|&end| end < 1 << 57)
        .max()
        .unwrap_or(1 << 47);
    let top = 1u64 << (64 - (highest - 1).leading_zeros());
    let mapped = status
        .lines()
        .find_map(|line| line.strip_prefix("VmSize:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .map_or(0, |kib| kib << 10);
    match limit {
        Some(limit) => top.min(limit.saturating_sub(mapped)),
        None => top.saturating_sub(mapped),
    }
}

/// Bytes for a log line: `258 MiB`, `1.1 TiB`.
fn bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut value = n as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit < UNITS.len() - 1 {
        value /= 1024.0;
        unit += 1;
    }
    if value.fract() == 0.0 || value >= 100.0 {
        format!("{value:.0} {}", UNITS[unit])
    } else {
        format!("{value:.1} {}", UNITS[unit])
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

#[cfg(test)]
mod tests;
