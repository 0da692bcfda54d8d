//! The registry's residency transitions under `--load on-demand`, on a real
//! engine and the real digits component (built by `make guests` into the
//! target directory beside this test binary): registered → loading →
//! resident → evicted → loading again, pinned models, one load for
//! concurrent first requests, and a load that fails.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use super::{Budget, Lookup, Registry, State};
use crate::lifecycle::repository;
use crate::lifecycle::settings::Settings;
use crate::pool::PoolConfig;
use crate::runtime::cache::CompileCache;

const LIMIT: usize = 64 << 20;

/// `target/<profile>/deps/this-test` → `target/wasm32-wasip2/release/`.
fn guest(name: &str) -> Vec<u8> {
    let exe = std::env::current_exe().unwrap();
    let target = exe.ancestors().nth(3).unwrap();
    let path = target.join(format!("wasm32-wasip2/release/{name}.wasm"));
    std::fs::read(&path).unwrap_or_else(|err| {
        panic!(
            "{}: {err}; build the guests first (make guests)",
            path.display()
        )
    })
}

/// A repository of digits copies `m0`..`m{count-1}` (the tomls given), and
/// a `broken` model that is not WebAssembly.
fn repository(count: usize, tomls: &[(usize, &str)]) -> PathBuf {
    static N: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let dir = std::env::temp_dir().join(format!(
        "wasm-host-registry-{}-{}",
        std::process::id(),
        N.fetch_add(1, std::sync::atomic::Ordering::SeqCst)
    ));
    let digits = guest("guest_model");
    for i in 0..count {
        let folder = dir.join(format!("m{i}"));
        std::fs::create_dir_all(&folder).unwrap();
        std::fs::write(folder.join("model.wasm"), &digits).unwrap();
        if let Some((_, text)) = tomls.iter().find(|(n, _)| *n == i) {
            std::fs::write(folder.join("model.toml"), text).unwrap();
        }
    }
    std::fs::create_dir_all(dir.join("broken")).unwrap();
    std::fs::write(dir.join("broken/model.wasm"), b"\0asm but not really").unwrap();
    dir
}

/// An on-demand registry whose budget holds `models` one-instance models,
/// with every model in `dir` registered.
fn registry(dir: &std::path::Path, models: usize) -> Arc<Registry> {
    let (engine, _, _) = crate::runtime::engine::build(64, LIMIT).unwrap();
    crate::runtime::engine::start_epoch_ticker(&engine);
    let linker = crate::model::linker(&engine).unwrap();
    let cache = CompileCache::new(Some(std::env::temp_dir().join("wasm-host-registry-cache")));
    let defaults = Settings {
        pool: PoolConfig {
            instances: 1,
            max_instances: 2,
            min_instances: None,
            idle_timeout: Duration::from_secs(60),
            memory_limit: LIMIT,
            queue_timeout: Duration::from_secs(10),
            max_queue: 64,
            max_requests: None,
            max_requests_jitter: 0,
        },
        timeout: Duration::from_secs(10),
        batching: None,
    };
    let budget = Budget {
        memory: (models * LIMIT) as u64,
        instances: models,
        memory_cap: 4 << 30,
    };
    let registry = Registry::new(engine, linker, cache, defaults, budget);
    registry.enable_on_demand();
    let (found, _broken) = repository::scan(dir).unwrap();
    registry.register_all(found);
    registry
}

fn resident(registry: &Registry, name: &str) -> bool {
    let index = registry.index();
    let entry = index.iter().find(|e| e.name == name).unwrap();
    entry.resident
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_model_is_registered_loaded_evicted_and_loaded_again() {
    let dir = repository(2, &[]);
    let registry = registry(&dir, 1);
    // Registered: in the index as READY, not resident; a lookup says so.
    let entry = registry
        .index()
        .into_iter()
        .find(|e| e.name == "m0")
        .unwrap();
    assert_eq!((entry.state, entry.resident), (State::Ready, false));
    assert!(matches!(
        registry.get("m0", None),
        Err(Lookup::NotResident { .. })
    ));
    // m0, m1 and the broken one: registering reads no model file.
    assert_eq!(registry.residency().registered, 3);

    // Loaded by its first request.
    let m0 = registry.resolve("m0", None).await.unwrap();
    assert_eq!(m0.name, "m0");
    assert!(resident(&registry, "m0"));
    assert_eq!(registry.residency().resident_bytes, LIMIT as u64);

    // m1's load evicts m0 (idle, least recently used): still registered.
    registry.resolve("m1", None).await.unwrap();
    assert!(resident(&registry, "m1"));
    assert!(!resident(&registry, "m0"));
    assert!(matches!(
        registry.get("m0", None),
        Err(Lookup::NotResident { .. })
    ));
    let residency = registry.residency();
    assert_eq!((residency.registered, residency.resident), (3, 1));

    // And loads again at its next request, evicting m1.
    registry.resolve("m0", None).await.unwrap();
    assert!(resident(&registry, "m0") && !resident(&registry, "m1"));
    let text = registry.metrics().render();
    assert!(text.contains("wasm_host_model_loads_total{model=\"m0\",cause=\"demand\"} 2"));
    assert!(text.contains("wasm_host_model_evictions_total{model=\"m0\"} 1"));
    assert!(text.contains("wasm_host_model_evictions_total{model=\"m1\"} 1"));

    // Its metadata, kept from the first load, answers without a load.
    let described = registry.describe("m1", None).await.unwrap();
    assert!(!described.resident);
    assert_eq!(described.metadata.inputs[0].name, "x");
    assert!(!resident(&registry, "m1"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pinned_model_is_never_evicted_and_a_full_budget_refuses_naming_it() {
    let dir = repository(3, &[(0, "pinned = true\n")]);
    let registry = registry(&dir, 2);
    registry.resolve("m0", None).await.unwrap();
    for model in ["m1", "m2", "m1", "m2"] {
        registry.resolve(model, None).await.unwrap();
        assert!(resident(&registry, "m0"), "the pinned model stays");
    }
    // A model in flight cannot go either: with m2 busy and m0 pinned, m1
    // finds no room.
    let m2 = registry.get("m2", None).unwrap();
    let lease = m2.pool.acquire().await.unwrap();
    let Err(Lookup::Unavailable { reason, .. }) = registry.resolve("m1", None).await else {
        panic!("m1 loaded with the budget full of a pinned and a busy model");
    };
    assert!(reason.contains("--memory-budget"), "{reason}");
    assert!(reason.contains("1 pinned"), "{reason}");
    // It stays registered, and loads once m2 is idle again.
    assert!(matches!(
        registry.get("m1", None),
        Err(Lookup::NotResident { .. })
    ));
    drop(lease);
    registry.resolve("m1", None).await.unwrap();
    assert!(resident(&registry, "m0") && resident(&registry, "m1"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_first_requests_make_one_load() {
    let dir = repository(1, &[]);
    let registry = registry(&dir, 4);
    let requests: Vec<_> = (0..16)
        .map(|_| {
            let registry = Arc::clone(&registry);
            tokio::spawn(async move { registry.resolve("m0", None).await.map(|s| s.loaded_at) })
        })
        .collect();
    let mut loaded_at = Vec::new();
    for request in requests {
        loaded_at.push(request.await.unwrap().unwrap());
    }
    // Sixteen answers, one served model, one load.
    assert!(loaded_at.iter().all(|at| *at == loaded_at[0]));
    assert_eq!(registry.registered("m0").unwrap().attempts(), 1);
    let text = registry.metrics().render();
    assert!(text.contains("wasm_host_model_loads_total{model=\"m0\",cause=\"demand\"} 1"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_load_that_fails_answers_why_and_is_tried_again_at_the_next_request() {
    let dir = repository(0, &[]);
    let registry = registry(&dir, 2);
    let broken = registry
        .registered("broken")
        .expect("registered without being read");
    let Err(Lookup::Unavailable { reason, .. }) = registry.resolve("broken", None).await else {
        panic!("a broken model loaded");
    };
    assert!(!reason.is_empty());
    // Still registered, not resident, and retried by the next request.
    assert!(matches!(
        registry.get("broken", None),
        Err(Lookup::NotResident { .. })
    ));
    assert!(registry.resolve("broken", None).await.is_err());
    assert_eq!(broken.attempts(), 2);
    assert!(!resident(&registry, "broken"));
}
