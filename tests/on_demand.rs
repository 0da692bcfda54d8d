//! More models than memory (issue 29, design §11): `--load on-demand`
//! registers a repository's models without loading them, loads each at its
//! first request (one load however many ask at once) and evicts the least
//! recently used idle ones to stay under `--memory-budget`. Real binary,
//! real components, real HTTP on loopback; what happened is read from
//! `/metrics` and the repository index, as an operator would.

mod support;

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use support::{Host, guest, request};

const TOKEN: &str = "on-demand-token";

/// Each model's memory limit; the budgets below are multiples of it, and
/// every model has one instance, so a budget of N limits holds N models.
const LIMIT_MIB: u64 = 64;

/// A repository of `count` copies of the digits model, `m0` .. `m{count-1}`,
/// with `model.toml` lines per model where given.
fn repository(count: usize, toml: &[(usize, &str)]) -> PathBuf {
    let dir = support::scratch_file("on-demand");
    let digits = guest("guest_model");
    for i in 0..count {
        let folder = dir.join(format!("m{i}"));
        std::fs::create_dir_all(&folder).unwrap();
        std::fs::copy(&digits, folder.join("model.wasm")).unwrap();
        if let Some((_, text)) = toml.iter().find(|(n, _)| *n == i) {
            std::fs::write(folder.join("model.toml"), text).unwrap();
        }
    }
    dir
}

/// A host serving `dir` on demand with a budget that holds `models` models.
fn start(dir: &std::path::Path, models: u64) -> Host {
    let budget = format!("{}MiB", models * LIMIT_MIB);
    let limit = format!("{LIMIT_MIB}MiB");
    Host::start_without_model(
        &[
            "--model-repository",
            dir.to_str().unwrap(),
            "--model-control",
            "explicit",
            "--load",
            "on-demand",
            "--instances",
            "1",
            "--memory-limit",
            &limit,
            "--memory-budget",
            &budget,
        ],
        &[("WASM_HOST_ADMIN_TOKEN", TOKEN)],
    )
}

/// Row `row` of the digits reference as an OIP request for its label.
fn digits(row: usize) -> (Value, i64) {
    let reference = support::reference();
    let body = json!({
        "inputs": [{ "name": "x", "shape": [1, 64], "datatype": "FP32",
                     "data": reference["inputs"][row] }],
        "outputs": [{ "name": "label" }],
    });
    (body, reference["predicted_labels"][row].as_i64().unwrap())
}

fn infer(host: &Host, model: &str, row: usize) -> support::Response {
    let (body, _) = digits(row);
    request(
        host.addr,
        "POST",
        &format!("/v2/models/{model}/infer"),
        &[("Content-Type", "application/json")],
        &serde_json::to_vec(&body).unwrap(),
    )
    .unwrap()
}

/// Asserts a 200 with the reference label for `row`.
fn assert_correct(response: &support::Response, model: &str, row: usize) {
    assert_eq!(
        response.status,
        200,
        "{model}: {}",
        String::from_utf8_lossy(&response.body)
    );
    let label = response.json()["outputs"][0]["data"][0].as_i64();
    assert_eq!(label, Some(digits(row).1), "{model} row {row}");
}

/// The sum of every sample of `name` whose labels include all of `labels`
/// (`model="m3"`), in the Prometheus text `/metrics` serves.
fn metric(text: &str, name: &str, labels: &[&str]) -> f64 {
    text.lines()
        .filter(|line| !line.starts_with('#'))
        .filter(|line| {
            line.strip_prefix(name)
                .is_some_and(|rest| rest.starts_with('{') || rest.starts_with(' '))
        })
        .filter(|line| labels.iter().all(|l| line.contains(l)))
        .filter_map(|line| line.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

fn metrics(host: &Host) -> String {
    String::from_utf8(host.get("/metrics").body).unwrap()
}

fn index(host: &Host) -> Vec<Value> {
    let response = host.admin("/v2/repository/index", &json!({}), Some(TOKEN));
    assert_eq!(response.status, 200);
    response.json().as_array().unwrap().clone()
}

fn resident(index: &[Value]) -> Vec<String> {
    index
        .iter()
        .filter(|e| e["resident"] == true)
        .map(|e| e["name"].as_str().unwrap().to_owned())
        .collect()
}

/// Draws model numbers 0..n with probability ∝ 1/(k+1) (Zipf, s = 1),
/// from a fixed seed: a few hot models and a long cold tail.
struct Zipf {
    cumulative: Vec<f64>,
    state: u64,
}

impl Zipf {
    fn new(n: usize, seed: u64) -> Zipf {
        let mut total = 0.0;
        let cumulative = (0..n)
            .map(|k| {
                total += 1.0 / (k as f64 + 1.0);
                total
            })
            .collect();
        Zipf {
            cumulative,
            state: seed | 1,
        }
    }

    fn next(&mut self) -> usize {
        // xorshift64*
        self.state ^= self.state >> 12;
        self.state ^= self.state << 25;
        self.state ^= self.state >> 27;
        let bits = self.state.wrapping_mul(0x2545_f491_4f6c_dd1d) >> 11;
        let u = bits as f64 / (1u64 << 53) as f64 * self.cumulative.last().unwrap();
        self.cumulative.partition_point(|&c| c < u)
    }
}

#[test]
fn forty_models_in_a_budget_of_four_answer_zipf_traffic_correctly_within_the_budget() {
    const MODELS: usize = 40;
    const CLIENTS: usize = 4;
    const REQUESTS: usize = 100;
    let dir = repository(MODELS, &[]);
    let started = Instant::now();
    let host = start(&dir, 4);
    let ready_in = started.elapsed();
    host.wait_for_log("registered 40 models", Duration::from_secs(5));
    let before = index(&host);
    assert_eq!(before.len(), MODELS);
    assert!(resident(&before).is_empty(), "nothing loads at start");

    // A watcher reads the resident bytes gauge throughout.
    let stop = Arc::new(AtomicBool::new(false));
    let watcher = {
        let (stop, addr) = (Arc::clone(&stop), host.addr);
        std::thread::spawn(move || {
            let mut most: f64 = 0.0;
            let mut reads = 0;
            while !stop.load(Ordering::SeqCst) || reads == 0 {
                let response = request(addr, "GET", "/metrics", &[], b"").unwrap();
                let text = String::from_utf8(response.body).unwrap();
                most = most.max(metric(&text, "wasm_host_resident_memory_bytes", &[]));
                reads += 1;
            }
            most
        })
    };
    let clients: Vec<_> = (0..CLIENTS)
        .map(|client| {
            let addr = host.addr;
            std::thread::spawn(move || {
                let mut zipf = Zipf::new(MODELS, 0x9e37_79b9 + client as u64);
                let mut requested = Vec::new();
                for i in 0..REQUESTS {
                    let model = format!("m{}", zipf.next());
                    let row = (client * REQUESTS + i) % 200;
                    let (body, want) = digits(row);
                    let response = request(
                        addr,
                        "POST",
                        &format!("/v2/models/{model}/infer"),
                        &[("Content-Type", "application/json")],
                        &serde_json::to_vec(&body).unwrap(),
                    )
                    .unwrap();
                    assert_eq!(
                        response.status,
                        200,
                        "{model}: {}",
                        String::from_utf8_lossy(&response.body)
                    );
                    let label = response.json()["outputs"][0]["data"][0].as_i64();
                    assert_eq!(label, Some(want), "{model} row {row}");
                    requested.push(model);
                }
                requested
            })
        })
        .collect();
    let mut requested: Vec<String> = clients
        .into_iter()
        .flat_map(|c| c.join().unwrap())
        .collect();
    stop.store(true, Ordering::SeqCst);
    let most = watcher.join().unwrap();
    requested.sort();
    requested.dedup();

    let text = metrics(&host);
    let budget = metric(&text, "wasm_host_memory_budget_bytes", &[]);
    assert_eq!(budget, ((4 * LIMIT_MIB) << 20) as f64);
    assert!(most > 0.0 && most <= budget, "resident {most} of {budget}");
    let loads = metric(&text, "wasm_host_model_loads_total", &["cause=\"demand\""]);
    let evictions = metric(&text, "wasm_host_model_evictions_total", &[]);
    // Every model asked for loaded at least once; all but the four that
    // fit were evicted at least once, and every load past the fourth
    // evicted one.
    assert!(loads >= requested.len() as f64, "{loads} loads");
    assert!(requested.len() > 4, "the traffic reached {requested:?}");
    assert_eq!(evictions, loads - resident(&index(&host)).len() as f64);
    assert!(metric(&text, "wasm_host_model_load_duration_seconds_count", &[]) >= loads);
    assert!(resident(&index(&host)).len() <= 4);
    assert_eq!(
        metric(&text, "wasm_host_models_registered", &[]),
        MODELS as f64
    );
    let evicted = host
        .log()
        .iter()
        .filter(|line| line.contains("evicting model") && line.contains("least recently used"))
        .count();
    assert_eq!(evicted as f64, evictions, "one log line per eviction");
    let status = host.get("/status").json();
    assert_eq!(status["residency"]["registered"], MODELS);
    eprintln!(
        "{} requests over {} models: {loads} loads, {evictions} evictions, host ready in \
         {ready_in:?}",
        CLIENTS * REQUESTS,
        requested.len()
    );
}

#[test]
fn concurrent_first_requests_make_one_load_and_metadata_needs_none() {
    let dir = repository(3, &[]);
    let host = start(&dir, 3);

    // Metadata, config and readiness answer without a load.
    let metadata = host.get("/v2/models/m2");
    assert_eq!(metadata.status, 200);
    assert_eq!(metadata.json()["name"], "m2");
    assert_eq!(metadata.json()["inputs"][0]["name"], "x");
    let config = host.get("/v2/models/m2/config");
    assert_eq!(
        config.status,
        200,
        "{}",
        String::from_utf8_lossy(&config.body)
    );
    assert_eq!(config.json()["input"][0]["name"], "x");
    assert_eq!(host.get("/v2/models/m2/ready").status, 200);
    assert!(resident(&index(&host)).is_empty());
    assert_eq!(
        metric(&metrics(&host), "wasm_host_model_loads_total", &[]),
        0.0
    );

    // Sixteen clients ask for m0 at once: one load, sixteen answers.
    let gate = Arc::new(Barrier::new(16));
    let clients: Vec<_> = (0..16)
        .map(|row| {
            let (gate, addr) = (Arc::clone(&gate), host.addr);
            std::thread::spawn(move || {
                let (body, want) = digits(row);
                let body = serde_json::to_vec(&body).unwrap();
                let headers = [("Content-Type", "application/json")];
                gate.wait();
                let response =
                    request(addr, "POST", "/v2/models/m0/infer", &headers, &body).unwrap();
                (response, want)
            })
        })
        .collect();
    for client in clients {
        let (response, want) = client.join().unwrap();
        assert_eq!(
            response.status,
            200,
            "{}",
            String::from_utf8_lossy(&response.body)
        );
        assert_eq!(
            response.json()["outputs"][0]["data"][0].as_i64(),
            Some(want)
        );
    }
    let text = metrics(&host);
    assert_eq!(
        metric(
            &text,
            "wasm_host_model_loads_total",
            &["model=\"m0\"", "cause=\"demand\""]
        ),
        1.0,
        "{text}"
    );
    assert_eq!(resident(&index(&host)), vec!["m0".to_owned()]);
}

#[test]
fn pinned_models_stay_and_a_full_budget_of_them_answers_503_naming_the_budget() {
    // m0 pinned by its model.toml; m1 pinned by the load API; budget: two.
    let dir = repository(5, &[(0, "pinned = true\n")]);
    let host = start(&dir, 2);
    assert_correct(&infer(&host, "m0", 0), "m0", 0);
    for round in 0..3 {
        for model in ["m2", "m3", "m4"] {
            assert_correct(&infer(&host, model, round), model, round);
        }
    }
    let text = metrics(&host);
    assert_eq!(
        metric(&text, "wasm_host_model_loads_total", &["model=\"m0\""]),
        1.0
    );
    assert_eq!(
        metric(&text, "wasm_host_model_evictions_total", &["model=\"m0\""]),
        0.0
    );
    assert!(metric(&text, "wasm_host_model_evictions_total", &[]) >= 8.0);
    assert!(resident(&index(&host)).contains(&"m0".to_owned()));

    // Pinning m1 through Triton's load API fills the budget with pinned
    // models: the load evicts the unpinned one left.
    let load = host.admin(
        "/v2/repository/models/m1/load",
        &json!({ "parameters": { "pinned": true } }),
        Some(TOKEN),
    );
    assert_eq!(load.status, 200, "{}", String::from_utf8_lossy(&load.body));
    let text = metrics(&host);
    assert_eq!(
        metric(
            &text,
            "wasm_host_model_loads_total",
            &["model=\"m1\"", "cause=\"explicit\""]
        ),
        1.0
    );
    let mut now = resident(&index(&host));
    now.sort();
    assert_eq!(now, vec!["m0".to_owned(), "m1".to_owned()]);

    // Nothing can go: the next cold request is refused at once, not hung.
    let asked = Instant::now();
    let refused = infer(&host, "m2", 0);
    assert_eq!(refused.status, 503);
    assert_eq!(refused.header("retry-after"), Some("1"));
    assert!(
        refused.error().contains("--memory-budget"),
        "{}",
        refused.error()
    );
    assert!(refused.error().contains("pinned"), "{}", refused.error());
    assert!(asked.elapsed() < Duration::from_secs(5));
    // The pinned ones still serve, and the refused one is still registered.
    assert_correct(&infer(&host, "m1", 3), "m1", 3);
    let entry = index(&host)
        .into_iter()
        .find(|e| e["name"] == "m2")
        .unwrap();
    assert_eq!(entry["state"], "READY", "{entry}");
    assert_eq!(entry["resident"], false);

    // Unloading a pinned model makes room again.
    let unload = host.admin("/v2/repository/models/m1/unload", &json!({}), Some(TOKEN));
    assert_eq!(unload.status, 200);
    support::eventually("m1's room to free", Duration::from_secs(5), || {
        infer(&host, "m2", 4).status == 200
    });
}

#[test]
fn poll_mode_registers_a_new_folder_without_loading_it_and_forgets_a_removed_one() {
    let dir = repository(2, &[]);
    let budget = format!("{}MiB", 2 * LIMIT_MIB);
    let limit = format!("{LIMIT_MIB}MiB");
    let host = Host::start_without_model(
        &[
            "--model-repository",
            dir.to_str().unwrap(),
            "--model-control",
            "poll",
            "--repository-poll-interval",
            "100ms",
            "--load",
            "on-demand",
            "--instances",
            "1",
            "--memory-limit",
            &limit,
            "--memory-budget",
            &budget,
        ],
        &[("WASM_HOST_ADMIN_TOKEN", TOKEN)],
    );
    let folder = dir.join("late");
    std::fs::create_dir_all(&folder).unwrap();
    std::fs::copy(guest("guest_model"), folder.join("model.wasm")).unwrap();
    support::eventually(
        "the new folder to be registered",
        Duration::from_secs(10),
        || index(&host).iter().any(|e| e["name"] == "late"),
    );
    assert!(resident(&index(&host)).is_empty(), "registered, not loaded");
    assert_correct(&infer(&host, "late", 7), "late", 7);
    assert_eq!(
        metric(
            &metrics(&host),
            "wasm_host_model_loads_total",
            &["model=\"late\"", "cause=\"demand\""]
        ),
        1.0
    );
    std::fs::remove_dir_all(dir.join("m1")).unwrap();
    support::eventually(
        "the removed folder to be forgotten",
        Duration::from_secs(10),
        || index(&host).iter().all(|e| e["name"] != "m1"),
    );
    assert_eq!(infer(&host, "m1", 0).status, 404);
}
