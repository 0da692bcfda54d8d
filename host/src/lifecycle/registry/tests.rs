//! The registry's residency transitions under `--load on-demand`, on a real
//! engine and the real digits component (built by `make guests` into the
//! target directory beside this test binary): registered → loading →
//! resident → evicted → loading again, pinned models, one load for
//! concurrent first requests, and a load that fails.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use super::{Budget, Lookup, Registry, State, from_model};
use crate::core::error::LoadError;
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

/// What the resident models and the loads in flight hold, read under the
/// host-wide lock (every reservation and swap happens under it).
async fn held(registry: &Registry) -> u64 {
    let _changing = registry.changing.lock().await;
    let reserved: u64 = registry
        .reserved
        .lock()
        .unwrap()
        .values()
        .map(|room| room.memory)
        .sum();
    registry.residency().resident_bytes + reserved
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reservation_holds_its_room_until_dropped_and_a_failed_load_gives_it_back() {
    // m2's memory limit is too small for the digits guest: its load fails
    // after it reserved.
    let dir = repository(3, &[(2, "memory-limit = \"1MiB\"\n")]);
    let registry = registry(&dir, 1);
    let settings = registry.defaults().clone();
    // A load in flight for m0 holds the whole budget: m1 cannot evict it.
    let reservation = registry.reserve("m0", &settings).unwrap();
    let Err(why) = registry.reserve("m1", &settings) else {
        panic!("two reservations in a budget of one");
    };
    assert!(matches!(why, LoadError::OverBudget(_)), "{why:?}");
    assert!(why.message().contains("1 loading"), "{why}");
    let Err(Lookup::Unavailable { reason, .. }) = registry.resolve("m1", None).await else {
        panic!("m1 loaded beside a reservation that fills the budget");
    };
    assert!(reason.contains("--memory-budget"), "{reason}");
    // Given back, the room is m1's.
    drop(reservation);
    registry.resolve("m1", None).await.unwrap();
    assert_eq!(held(&registry).await, LIMIT as u64);
    // A file that does not compile evicts nothing.
    assert!(registry.resolve("broken", None).await.is_err());
    assert!(resident(&registry, "m1"));
    // A load that fails after reserving (m2's instance cannot start in its
    // memory limit; it evicted m1 to reserve) gives its room back: nothing
    // is reserved, and m0 loads.
    let Err(Lookup::Unavailable { reason, .. }) = registry.resolve("m2", None).await else {
        panic!("the digits guest started in 1 MiB");
    };
    assert!(!reason.contains("--memory-budget"), "{reason}");
    assert!(registry.reserved.lock().unwrap().is_empty());
    assert_eq!(held(&registry).await, 0);
    registry.resolve("m0", None).await.unwrap();
    assert_eq!(held(&registry).await, LIMIT as u64);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_load_in_flight_does_not_hold_up_other_models_only_its_own() {
    let dir = repository(2, &[]);
    let registry = registry(&dir, 2);
    let settings = registry.defaults().clone();
    // m0 in the expensive part of its load: its lock and its room held,
    // the host-wide lock not.
    let lock = registry.model_lock("m0");
    let guard = lock.lock().await;
    let reservation = registry.reserve("m0", &settings).unwrap();
    // Another model loads meanwhile.
    tokio::time::timeout(Duration::from_secs(10), registry.resolve("m1", None))
        .await
        .expect("m1's load waited for m0's")
        .unwrap();
    // m0's own load and unload wait for it.
    let waiting = {
        let registry = Arc::clone(&registry);
        tokio::spawn(async move { registry.resolve("m0", None).await.map(|_| ()) })
    };
    let unloading = {
        let registry = Arc::clone(&registry);
        tokio::spawn(async move { registry.unload("m1").await })
    };
    unloading.await.unwrap().unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(!waiting.is_finished(), "m0 loaded beside its own load");
    drop(reservation);
    drop(guard);
    registry.release_model_lock("m0", lock);
    waiting.await.unwrap().unwrap();
    assert!(resident(&registry, "m0"));
    assert!(registry.model_locks.lock().unwrap().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_loads_of_many_models_never_pass_the_budget() {
    let dir = repository(6, &[]);
    let registry = registry(&dir, 2);
    let budget = registry.budget().memory;
    let done = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let watcher = {
        let (registry, done) = (Arc::clone(&registry), Arc::clone(&done));
        tokio::spawn(async move {
            let mut most = 0;
            while !done.load(std::sync::atomic::Ordering::SeqCst) {
                most = most.max(held(&registry).await);
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
            most
        })
    };
    let clients: Vec<_> = (0..6)
        .map(|client| {
            let registry = Arc::clone(&registry);
            tokio::spawn(async move {
                for i in 0..6 {
                    let name = format!("m{}", (client + i * 5) % 6);
                    // Two loads in flight fill the budget: a third may be
                    // refused (a 503 to a request), never let past it.
                    if let Err(Lookup::Unavailable { reason, .. }) =
                        registry.resolve(&name, None).await
                    {
                        assert!(reason.contains("--memory-budget"), "{reason}");
                    }
                }
            })
        })
        .collect();
    for client in clients {
        client.await.unwrap();
    }
    done.store(true, std::sync::atomic::Ordering::SeqCst);
    assert!(watcher.await.unwrap() <= budget);
    assert!(registry.reserved.lock().unwrap().is_empty());
    assert!(registry.residency().resident_bytes <= budget);
}

/// `model/` says which failures are not a bad file by their type; the text
/// a load gives is the whole chain either way.
#[test]
fn a_failure_from_model_keeps_its_variant_and_its_whole_text() {
    let typed = anyhow::Error::from(LoadError::Unsupported("native code".into()));
    assert_eq!(
        from_model(&typed.context("m.cwasm")),
        LoadError::Unsupported("m.cwasm: native code".into())
    );
    let missing = anyhow::Error::from(LoadError::NotFound("no file".into()));
    assert_eq!(from_model(&missing), LoadError::NotFound("no file".into()));
    let plain = anyhow::anyhow!("m.wasm failed to compile");
    assert_eq!(
        from_model(&plain),
        LoadError::BadFile("m.wasm failed to compile".into())
    );
}
