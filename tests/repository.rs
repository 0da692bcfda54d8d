//! Many models in one host: a model repository, loaded, swapped and
//! unloaded at runtime (over HTTP, by polling, or by a reload signal) with
//! no failed request, none able to slow or break another.

mod support;

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use base64::Engine as _;
use serde_json::{Value, json};
use support::{Client, Host, fault_action, guest, request, scratch_file};

const TOKEN: &str = support::ADMIN_TOKEN;

/// A repository: digits, echo (as version 1), slow (2 instances by its
/// model.toml), and a broken model whose file is not WebAssembly.
fn repository() -> PathBuf {
    let dir = support::scratch_file("repository");
    let put = |rel: &str, from: &Path| {
        let path = dir.join(rel);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::copy(from, path).unwrap();
    };
    put("digits/model.wasm", &guest("guest_model"));
    put("echo/1/model.wasm", &guest("echo_model"));
    put("slow/model.wasm", &guest("slow_model"));
    std::fs::write(
        dir.join("slow/model.toml"),
        "instances = 2\ntimeout = \"10s\"\n",
    )
    .unwrap();
    std::fs::create_dir_all(dir.join("broken")).unwrap();
    std::fs::write(dir.join("broken/model.wasm"), b"this is not a model").unwrap();
    dir
}

fn digits_body() -> Value {
    json!({ "inputs": [{ "name": "x", "shape": [1, 64], "datatype": "FP32",
                         "data": support::reference()["inputs"][0] }] })
}

fn echo_body(v: f32) -> Value {
    json!({ "inputs": [{ "name": "x", "shape": [1, 1], "datatype": "FP32", "data": [v] }] })
}

fn start_explicit(dir: &Path, extra: &[&str]) -> Host {
    let mut args = vec!["--instances", "2"];
    args.extend_from_slice(extra);
    Host::start_repository(dir, "explicit", &args)
}

#[test]
fn a_repository_serves_its_good_models_and_names_what_is_wrong_with_the_broken_one() {
    let dir = repository();
    let host = start_explicit(&dir, &[]);
    let index = host.repository_index();
    for name in ["digits", "echo", "slow"] {
        assert_eq!(
            support::model_state(&index, name).unwrap().0,
            "READY",
            "{index:?}"
        );
    }
    let (state, reason) = support::model_state(&index, "broken").unwrap();
    assert_eq!(state, "UNAVAILABLE");
    assert!(reason.contains("not a WebAssembly file"), "{reason}");
    assert_eq!(
        host.post_json("/v2/models/digits/infer", &digits_body())
            .status,
        200
    );
    assert_eq!(
        host.post_json("/v2/models/echo/infer", &echo_body(2.0))
            .status,
        200
    );
    // Numbered versions: 1 is served; another is a 404 that says which is.
    assert_eq!(
        host.post_json("/v2/models/echo/versions/1/infer", &echo_body(2.0))
            .status,
        200
    );
    let wrong = host.post_json("/v2/models/echo/versions/7/infer", &echo_body(2.0));
    assert_eq!(wrong.status, 404);
    assert!(
        wrong.error().contains("serves version \"1\""),
        "{}",
        wrong.error()
    );
    let broken = host.post_json("/v2/models/broken/infer", &echo_body(1.0));
    assert_eq!(broken.status, 503);
    assert!(
        broken.error().contains("not a WebAssembly file"),
        "{}",
        broken.error()
    );
    // model.toml's settings: slow has 2 instances, the others the host's 2.
    let health = host.get("/health").json();
    assert_eq!(
        health["models"]["slow"]["instances"]["target"], 2,
        "{health}"
    );
    // Instance ids are unique across models.
    let ids: Vec<u64> = ["digits", "echo", "slow"]
        .iter()
        .map(|m| {
            let body = if *m == "digits" { digits_body() } else { echo_body(1.0) };
            let body = if *m == "slow" {
                json!({ "inputs": [{ "name": "ms", "shape": [1], "datatype": "INT64", "data": [1] }] })
            } else {
                body
            };
            host.post_json(&format!("/v2/models/{m}/infer"), &body).instance()
        })
        .collect();
    let distinct: std::collections::HashSet<_> = ids.iter().collect();
    assert_eq!(distinct.len(), 3, "{ids:?}");
    // Per-model metrics.
    let metrics = String::from_utf8(host.get("/metrics").body).unwrap();
    assert!(
        metrics.contains(
            "wasm_host_inference_requests_total{model=\"digits\",version=\"1\",outcome=\"success\"}"
        ),
        "{metrics}"
    );
}

#[test]
fn models_load_swap_and_unload_under_load_with_no_failed_request() {
    let dir = repository();
    let host = start_explicit(&dir, &[]);
    let addr = host.addr;
    let stop = Arc::new(AtomicBool::new(false));
    let served = Arc::new(AtomicUsize::new(0));
    let clients: Vec<_> = (0..8)
        .map(|_| {
            let (stop, served) = (Arc::clone(&stop), Arc::clone(&served));
            std::thread::spawn(move || {
                let mut client = Client::connect(addr).unwrap();
                let want = support::reference()["predicted_labels"][0].clone();
                while !stop.load(Ordering::SeqCst) || served.load(Ordering::SeqCst) < 2000 {
                    let response = client
                        .post_json("/v2/models/digits/infer", &digits_body())
                        .unwrap();
                    assert_eq!(
                        response.status,
                        200,
                        "{}",
                        String::from_utf8_lossy(&response.body)
                    );
                    assert_eq!(response.json()["outputs"][1]["data"][0], want);
                    served.fetch_add(1, Ordering::SeqCst);
                }
            })
        })
        .collect();
    support::eventually("digits traffic flowing", Duration::from_secs(10), || {
        served.load(Ordering::SeqCst) >= 50
    });

    // Slow requests in flight (1.5 s each) when slow is unloaded.
    let slow_requests: Vec<_> = (0..2)
        .map(|_| {
            std::thread::spawn(move || {
                let body = json!({ "inputs": [{ "name": "ms", "shape": [1], "datatype": "INT64", "data": [1500] }] });
                Client::connect(addr).unwrap().post_json("/v2/models/slow/infer", &body).unwrap()
            })
        })
        .collect();
    host.wait_for_health("both slow requests running", Duration::from_secs(10), |h| {
        h["models"]["slow"]["instances"]["busy"] == 2
    });

    // A new model, from the repository folder it was copied into.
    std::fs::create_dir_all(dir.join("fault")).unwrap();
    std::fs::copy(guest("fault_model"), dir.join("fault/model.wasm")).unwrap();
    let loaded = host.admin("/v2/repository/models/fault/load", &json!({}), Some(TOKEN));
    assert_eq!(
        loaded.status,
        200,
        "{}",
        String::from_utf8_lossy(&loaded.body)
    );
    assert_eq!(
        host.post_json("/v2/models/fault/infer", &fault_action(0, 5))
            .status,
        200
    );

    // Echo version 2 (the digits component, answering differently) swaps in.
    std::fs::create_dir_all(dir.join("echo/2")).unwrap();
    std::fs::copy(guest("echo_model"), dir.join("echo/2/model.wasm")).unwrap();
    let swapped = host.admin("/v2/repository/models/echo/load", &json!({}), Some(TOKEN));
    assert_eq!(
        swapped.status,
        200,
        "{}",
        String::from_utf8_lossy(&swapped.body)
    );
    let answer = host.post_json("/v2/models/echo/infer", &echo_body(3.0));
    assert_eq!(answer.json()["model_version"], "2");
    assert_eq!(
        host.post_json("/v2/models/echo/versions/1/infer", &echo_body(3.0))
            .status,
        404
    );

    // Unload slow while its two requests are in flight: they finish.
    let unloaded = host.admin("/v2/repository/models/slow/unload", &json!({}), Some(TOKEN));
    assert_eq!(unloaded.status, 200);
    for slow in slow_requests {
        let response = slow.join().unwrap();
        assert_eq!(
            response.status,
            200,
            "{}",
            String::from_utf8_lossy(&response.body)
        );
    }
    let gone = host.post_json(
        "/v2/models/slow/infer",
        &json!({ "inputs": [{ "name": "ms", "shape": [1], "datatype": "INT64", "data": [1] }] }),
    );
    assert_eq!(gone.status, 404);
    assert!(gone.error().contains("unloaded"), "{}", gone.error());
    support::eventually("slow to finish unloading", Duration::from_secs(10), || {
        host.model_state("slow").unwrap().0 == "UNAVAILABLE"
    });
    assert_eq!(host.model_state("slow").unwrap().1, "unloaded");

    stop.store(true, Ordering::SeqCst);
    for client in clients {
        client.join().expect("a digits request failed");
    }
    assert!(served.load(Ordering::SeqCst) >= 2000);
}

#[test]
fn a_model_built_against_contract_0_1_is_refused_over_http_with_how_to_rebuild_it() {
    let dir = repository();
    let host = start_explicit(&dir, &[]);
    let component = std::fs::read(guest("contract_0_1_model")).unwrap();
    let body = support::upload_body(&component, None);
    let refused = host.admin("/v2/repository/models/old/load", &body, Some(TOKEN));
    assert_eq!(refused.status, 400, "{}", refused.error());
    assert!(
        refused.error().contains(
            "was built against the model contract wasm-host:model@0.1.0; \
             this wasm-host speaks 0.2.0: rebuild it"
        ),
        "{}",
        refused.error()
    );
    // Unavailable, as any model that failed to load, and saying why.
    let old = host.post_json("/v2/models/old/infer", &echo_body(1.0));
    assert_eq!(old.status, 503);
    assert!(old.error().contains("rebuild it"), "{}", old.error());
    assert_eq!(
        host.post_json("/v2/models/echo/infer", &echo_body(1.0))
            .status,
        200,
        "the other models serve on"
    );
}

#[test]
fn a_model_deployed_over_http_serves_and_the_control_endpoints_are_guarded() {
    let dir = repository();
    let host = start_explicit(&dir, &[]);
    let component = std::fs::read(guest("fault_model")).unwrap();
    let body = support::upload_body(&component, Some("{\"instances\": 3}"));
    // Without the token: 401 and nothing changes.
    let refused = host.admin("/v2/repository/models/plugin/load", &body, None);
    assert_eq!(refused.status, 401);
    assert_eq!(refused.header("www-authenticate"), Some("Bearer"));
    let wrong = host.admin("/v2/repository/models/plugin/load", &body, Some("guess"));
    assert_eq!(wrong.status, 401);
    assert_eq!(
        host.post_json("/v2/models/plugin/infer", &fault_action(0, 1))
            .status,
        404
    );
    // With it: served under the name it was loaded as, with its config.
    let loaded = host.admin("/v2/repository/models/plugin/load", &body, Some(TOKEN));
    assert_eq!(
        loaded.status,
        200,
        "{}",
        String::from_utf8_lossy(&loaded.body)
    );
    let answer = host.post_json("/v2/models/plugin/infer", &fault_action(0, 42));
    assert_eq!(support::fault_result(&answer), 42);
    assert_eq!(answer.json()["model_name"], "plugin");
    assert_eq!(
        host.get("/health").json()["models"]["plugin"]["instances"]["target"],
        3
    );
    // A precompiled artifact is native code: never from a client.
    let elf = json!({ "parameters": { "file:model.cwasm":
        base64::engine::general_purpose::STANDARD.encode(b"\x7fELF\x02\x01\x01 native code") } });
    let refused = host.admin("/v2/repository/models/native/load", &elf, Some(TOKEN));
    assert_eq!(refused.status, 400);
    assert!(
        refused.error().contains("native code"),
        "{}",
        refused.error()
    );
    // A config that only changes the instance count resizes in place.
    let resize = support::upload_body(&component, Some("{\"instances\": 1}"));
    let before = host
        .post_json("/v2/models/plugin/infer", &fault_action(0, 1))
        .instance();
    assert_eq!(
        host.admin("/v2/repository/models/plugin/load", &resize, Some(TOKEN))
            .status,
        200
    );
    assert_eq!(
        host.get("/health").json()["models"]["plugin"]["instances"]["target"],
        1
    );
    assert!(
        host.log()
            .iter()
            .any(|l| l.contains("plugin: resized to 1 instances"))
    );
    let after = host
        .post_json("/v2/models/plugin/infer", &fault_action(0, 1))
        .instance();
    assert!(
        after <= before + 3,
        "a resize keeps the instances: {before} then {after}"
    );

    // With --model-control none: the index reads, loading says how to turn it on.
    let fixed = Host::start_without_model(&["--model-repository", dir.to_str().unwrap()], &[]);
    let index = fixed.admin("/v2/repository/index", &json!({}), None);
    assert_eq!(index.status, 200);
    let off = fixed.admin("/v2/repository/models/digits/unload", &json!({}), None);
    assert_eq!(off.status, 403);
    assert!(
        off.error().contains("--model-control explicit"),
        "{}",
        off.error()
    );
    assert_eq!(
        fixed
            .post_json("/v2/models/digits/infer", &digits_body())
            .status,
        200
    );
}

#[test]
fn the_repository_api_can_live_on_its_own_address_only() {
    let dir = repository();
    let admin_port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let host = start_explicit(&dir, &["--admin-bind", &admin_port.to_string()]);
    let on_public = host.admin("/v2/repository/index", &json!({}), Some(TOKEN));
    assert_eq!(on_public.status, 404);
    let on_admin = request(
        admin_port,
        "POST",
        "/v2/repository/index",
        &[("Authorization", &format!("Bearer {TOKEN}"))],
        b"",
    )
    .unwrap();
    assert_eq!(on_admin.status, 200);
    let inference = request(admin_port, "GET", "/v2/models/digits", &[], b"").unwrap();
    assert_eq!(
        inference.status, 404,
        "the admin address serves only the repository API"
    );
}

#[test]
fn a_flood_of_looping_requests_to_one_model_does_not_fail_or_slow_another() {
    let dir = support::scratch_file("noisy");
    for (name, from) in [("digits", "guest_model"), ("looper", "fault_model")] {
        std::fs::create_dir_all(dir.join(name)).unwrap();
        std::fs::copy(guest(from), dir.join(name).join("model.wasm")).unwrap();
    }
    std::fs::write(
        dir.join("looper/model.toml"),
        "instances = 4\ntimeout = \"200ms\"\nmax-queue = 64\n",
    )
    .unwrap();
    std::fs::write(dir.join("digits/model.toml"), "instances = 2\n").unwrap();
    let host = Host::start_without_model(&["--model-repository", dir.to_str().unwrap()], &[]);
    let addr = host.addr;
    let stop = Arc::new(AtomicBool::new(false));
    let noisy: Vec<_> = (0..16)
        .map(|_| {
            let stop = Arc::clone(&stop);
            std::thread::spawn(move || {
                let mut client = Client::connect(addr).unwrap();
                let mut timeouts = 0;
                while !stop.load(Ordering::SeqCst) {
                    let response = client
                        .post_json("/v2/models/looper/infer", &fault_action(2, 0))
                        .unwrap();
                    assert!(matches!(response.status, 503 | 504), "{}", response.status);
                    timeouts += (response.status == 504) as usize;
                }
                timeouts
            })
        })
        .collect();
    host.wait_for_health("the looper flooded", Duration::from_secs(10), |h| {
        h["models"]["looper"]["instances"]["busy"] == 4
    });
    let mut client = Client::connect(addr).unwrap();
    let mut latencies = Vec::new();
    let started = Instant::now();
    while latencies.len() < 400 && started.elapsed() < Duration::from_secs(30) {
        let asked = Instant::now();
        let response = client
            .post_json("/v2/models/digits/infer", &digits_body())
            .unwrap();
        latencies.push(asked.elapsed());
        assert_eq!(
            response.status,
            200,
            "{}",
            String::from_utf8_lossy(&response.body)
        );
    }
    stop.store(true, Ordering::SeqCst);
    let timeouts: usize = noisy.into_iter().map(|t| t.join().unwrap()).sum();
    assert!(
        timeouts >= 16,
        "the noisy model was not looping: {timeouts} timeouts"
    );
    assert!(
        latencies.len() >= 400,
        "only {} digits requests in 30 s",
        latencies.len()
    );
    latencies.sort();
    let p99 = latencies[latencies.len() * 99 / 100];
    // The bound: a digits request waits for a runtime thread, and 4 looping
    // guests on 2 threads each hold one for up to an epoch tick (5 ms)
    // before they yield: about 10 ms, measured 10–50 ms here with the 16
    // clients and other tests sharing the same 2 cores. Stated generously
    // for a shared CI machine: 150 ms (a starved or blocked runtime takes
    // seconds, the looping requests' 200 ms deadline at the least).
    assert!(
        p99 < Duration::from_millis(150),
        "digits p99 {p99:?} beside a looping model"
    );
}

#[test]
fn a_polled_repository_loads_new_folders_swaps_changed_files_and_unloads_removed_ones() {
    let dir = support::scratch_file("polled");
    std::fs::create_dir_all(dir.join("digits")).unwrap();
    std::fs::copy(guest("guest_model"), dir.join("digits/model.wasm")).unwrap();
    let host = Host::start_without_model(
        &[
            "--model-repository",
            dir.to_str().unwrap(),
            "--model-control",
            "poll",
            "--repository-poll-interval",
            "300ms",
        ],
        &[],
    );
    let addr = host.addr;
    let stop = Arc::new(AtomicBool::new(false));
    let echo_answers = Arc::new(AtomicUsize::new(0));
    // A folder copied in (written beside, then renamed in, as operators do).
    let staged = support::scratch_file("staged-echo");
    std::fs::create_dir_all(&staged).unwrap();
    std::fs::copy(guest("echo_model"), staged.join("model.wasm")).unwrap();
    std::fs::rename(&staged, dir.join("echo")).unwrap();
    let copied = Instant::now();
    support::eventually("echo loaded", Duration::from_secs(5), || {
        host.post_json("/v2/models/echo/infer", &echo_body(1.0))
            .status
            == 200
    });
    assert!(
        copied.elapsed() < Duration::from_millis(2 * 300 + 1500),
        "{:?}",
        copied.elapsed()
    );

    // Under load on echo, its file changes: swapped with no failed request.
    let clients: Vec<_> = (0..4)
        .map(|_| {
            let (stop, answers) = (Arc::clone(&stop), Arc::clone(&echo_answers));
            std::thread::spawn(move || {
                let mut client = Client::connect(addr).unwrap();
                while !stop.load(Ordering::SeqCst) {
                    let response = client
                        .post_json("/v2/models/echo/infer", &echo_body(2.0))
                        .unwrap();
                    assert_eq!(
                        response.status,
                        200,
                        "{}",
                        String::from_utf8_lossy(&response.body)
                    );
                    answers.fetch_add(1, Ordering::SeqCst);
                }
            })
        })
        .collect();
    support::eventually("echo traffic flowing", Duration::from_secs(10), || {
        echo_answers.load(Ordering::SeqCst) >= 20
    });
    std::fs::write(dir.join("echo/model.toml"), "instances = 3\n").unwrap();
    host.wait_for_health(
        "the changed model swapped in",
        Duration::from_secs(10),
        |h| h["models"]["echo"]["instances"]["target"] == 3,
    );
    let at_swap = echo_answers.load(Ordering::SeqCst);
    support::eventually(
        "echo answering after the swap",
        Duration::from_secs(10),
        || echo_answers.load(Ordering::SeqCst) >= at_swap + 40,
    );
    stop.store(true, Ordering::SeqCst);
    for client in clients {
        client
            .join()
            .expect("an echo request failed during the swap");
    }
    assert!(echo_answers.load(Ordering::SeqCst) > 50);

    // A removed folder is unloaded.
    std::fs::remove_dir_all(dir.join("echo")).unwrap();
    support::eventually("echo unloaded", Duration::from_secs(10), || {
        host.post_json("/v2/models/echo/infer", &echo_body(1.0))
            .status
            == 404
    });
    let gone = host.post_json("/v2/models/echo/infer", &echo_body(1.0));
    assert!(gone.error().contains("unloaded"), "{}", gone.error());
    assert_eq!(
        host.post_json("/v2/models/digits/infer", &digits_body())
            .status,
        200
    );
}

#[test]
fn a_load_past_the_memory_budget_is_refused_with_its_numbers_and_others_keep_serving() {
    let dir = repository();
    let host = start_explicit(
        &dir,
        &["--memory-budget", "1GiB", "--memory-limit", "128MiB"],
    );
    // digits, echo, slow: 2 + 2 + 2 instances × 128 MiB = 768 MiB of 1 GiB.
    std::fs::create_dir_all(dir.join("big")).unwrap();
    std::fs::copy(guest("echo_model"), dir.join("big/model.wasm")).unwrap();
    std::fs::write(dir.join("big/model.toml"), "instances = 4\n").unwrap();
    let refused = host.admin("/v2/repository/models/big/load", &json!({}), Some(TOKEN));
    // Over the budget is a 503 to retry, as a cold on-demand request is.
    assert_eq!(refused.status, 503, "{}", refused.error());
    assert_eq!(refused.header("retry-after"), Some("1"));
    let error = refused.error();
    assert!(error.contains("4 instances × 128 MiB = 512 MiB"), "{error}");
    assert!(
        error.contains("768 MiB of the 1024 MiB --memory-budget"),
        "{error}"
    );
    let (state, reason) = host.model_state("big").unwrap();
    assert_eq!(state, "UNAVAILABLE");
    assert!(reason.contains("--memory-budget"), "{reason}");
    // A model the repository does not have is not found.
    let missing = host.admin(
        "/v2/repository/models/nowhere/load",
        &json!({}),
        Some(TOKEN),
    );
    assert_eq!(missing.status, 404, "{}", missing.error());
    assert!(
        missing.error().contains("has no folder"),
        "{}",
        missing.error()
    );
    assert_eq!(
        host.post_json("/v2/models/digits/infer", &digits_body())
            .status,
        200
    );
}

#[test]
fn triton_model_config_and_statistics_have_tritons_shapes() {
    let dir = repository();
    let host = start_explicit(&dir, &[]);
    for _ in 0..3 {
        assert_eq!(
            host.post_json("/v2/models/digits/infer", &digits_body())
                .status,
            200
        );
    }
    let bad = json!({ "inputs": [{ "name": "x", "shape": [1, 3], "datatype": "FP32", "data": [1, 2, 3] }] });
    assert_eq!(host.post_json("/v2/models/digits/infer", &bad).status, 400);
    let config = host.get("/v2/models/digits/config").json();
    assert_eq!(config["name"], "digits");
    assert_eq!(config["max_batch_size"], 0);
    assert_eq!(
        config["input"][0],
        json!({ "name": "x", "data_type": "TYPE_FP32", "dims": [-1, 64] })
    );
    assert_eq!(config["output"][1]["data_type"], "TYPE_INT64");
    assert_eq!(config["instance_group"][0]["count"], 2);
    let stats = host.get("/v2/models/digits/stats").json();
    let digits = &stats["model_stats"][0];
    assert_eq!(digits["name"], "digits");
    assert_eq!(digits["version"], "1");
    assert_eq!(digits["inference_count"], 3);
    assert_eq!(digits["execution_count"], 3);
    let inference = &digits["inference_stats"];
    assert_eq!(inference["success"]["count"], 3);
    assert_eq!(inference["fail"]["count"], 1);
    assert_eq!(inference["queue"]["count"], 3);
    assert!(inference["compute_infer"]["ns"].as_u64().unwrap() > 0);
    for key in ["compute_input", "compute_output", "cache_hit", "cache_miss"] {
        assert!(inference[key]["count"].is_u64(), "{key}");
    }
    let all = host.get("/v2/models/stats").json();
    assert_eq!(all["model_stats"].as_array().unwrap().len(), 3);
    assert_eq!(host.get("/v2/models/digits/versions/1/stats").status, 200);
    let extensions = host.get("/v2").json()["extensions"].clone();
    for extension in ["model_repository", "model_configuration", "statistics"] {
        assert!(
            extensions.as_array().unwrap().contains(&json!(extension)),
            "{extensions}"
        );
    }
}

fn pss(host: &Host) -> u64 {
    let rollup = std::fs::read_to_string(format!("/proc/{}/smaps_rollup", host.pid())).unwrap();
    let kib: u64 = rollup
        .lines()
        .find(|l| l.starts_with("Pss:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .unwrap()
        .parse()
        .unwrap();
    kib << 10
}

#[test]
fn unloading_a_model_frees_its_instances_and_the_memory_falls_back() {
    let dir = support::scratch_file("memory");
    std::fs::create_dir_all(dir.join("echo")).unwrap();
    std::fs::copy(guest("echo_model"), dir.join("echo/model.wasm")).unwrap();
    let host = start_explicit(&dir, &[]);
    let before = pss(&host);
    // The 16 MiB model, 4 instances, each of which writes 8 MiB of its own.
    std::fs::create_dir_all(dir.join("big")).unwrap();
    std::fs::copy(guest("fault_model"), dir.join("big/model.wasm")).unwrap();
    std::fs::write(
        dir.join("big/model.toml"),
        "instances = 4
",
    )
    .unwrap();
    assert_eq!(
        host.admin("/v2/repository/models/big/load", &json!({}), Some(TOKEN))
            .status,
        200
    );
    let addr = host.addr;
    let touch: Vec<_> = (0..4)
        .map(|_| {
            std::thread::spawn(move || {
                let body = fault_action(4, 300);
                let mut client = Client::connect(addr).unwrap();
                // Sleep so the four land on four instances, then dirty 8 MiB.
                assert_eq!(
                    client
                        .post_json("/v2/models/big/infer", &body)
                        .unwrap()
                        .status,
                    200
                );
                let body = fault_action(3, 8);
                assert_eq!(
                    client
                        .post_json("/v2/models/big/infer", &body)
                        .unwrap()
                        .status,
                    200
                );
            })
        })
        .collect();
    for t in touch {
        t.join().unwrap();
    }
    let loaded = pss(&host);
    assert_eq!(
        host.admin("/v2/repository/models/big/unload", &json!({}), Some(TOKEN))
            .status,
        200
    );
    support::eventually("big to finish unloading", Duration::from_secs(10), || {
        host.model_state("big").unwrap().0 == "UNAVAILABLE"
    });
    // A fixed pause on purpose: the pages of the retired instances go back
    // to the system after the state changes, and no event says when.
    std::thread::sleep(Duration::from_millis(200));
    let after = pss(&host);
    let mib = |b: u64| b >> 20;
    assert!(
        loaded > before + (8 << 20),
        "loading and using the model took only {} MiB",
        mib(loaded - before)
    );
    // The instances' memory is given back: at least three quarters of what
    // loading took.
    assert!(
        loaded - after > (loaded - before) * 3 / 4,
        "PSS {} MiB before, {} MiB loaded, {} MiB after unloading",
        mib(before),
        mib(loaded),
        mib(after)
    );
}

#[test]
fn two_model_files_serve_side_by_side_under_their_own_names() {
    let (digits, echo) = (guest("guest_model"), guest("echo_model"));
    let host = Host::start_without_model(
        &[
            digits.to_str().unwrap(),
            echo.to_str().unwrap(),
            "--instances",
            "1",
        ],
        &[],
    );
    assert_eq!(
        host.post_json("/v2/models/digits/infer", &digits_body())
            .status,
        200
    );
    assert_eq!(
        host.post_json("/v2/models/echo/infer", &echo_body(1.0))
            .status,
        200
    );
    // /predict needs one model to be unambiguous.
    let predict = host.post_json("/predict", &json!({ "inputs": [[0.5]] }));
    assert_eq!(predict.status, 404);
    assert!(
        predict.error().contains("digits, echo"),
        "{}",
        predict.error()
    );
    assert!(
        host.log()
            .iter()
            .any(|l| l.contains("with 2 models, 2 instances"))
    );
}

#[test]
fn a_reloaded_model_file_is_swapped_in_under_load_with_no_failed_request_and_a_bad_one_changes_nothing()
 {
    let path = scratch_file("model.wasm");
    std::fs::copy(guest("guest_model"), &path).unwrap();
    let host = Host::start(&path, &["--instances", "4"]);
    let addr = host.addr;
    let row = json!({ "inputs": [vec![0.5; 64]] });
    let stop = Arc::new(AtomicBool::new(false));
    // (when the request was sent, which model answered)
    let answers: Arc<Mutex<Vec<(Instant, String)>>> = Arc::default();
    let clients: Vec<_> = (0..8)
        .map(|_| {
            let (stop, answers, row) = (Arc::clone(&stop), Arc::clone(&answers), row.clone());
            std::thread::spawn(move || {
                let mut client = Client::connect(addr).unwrap();
                while !stop.load(Ordering::SeqCst) {
                    let sent = Instant::now();
                    let response = client.post_json("/predict", &row).unwrap();
                    assert_eq!(response.status, 200, "{}", response.error());
                    let model = response.json()["model"].as_str().unwrap().to_owned();
                    answers.lock().unwrap().push((sent, model));
                }
            })
        })
        .collect();

    support::eventually("traffic before the reload", Duration::from_secs(10), || {
        answers.lock().unwrap().len() > 60
    });
    // Deploy the new model as operators do: write beside, rename over.
    let staged = scratch_file("staged.wasm");
    std::fs::copy(guest("echo_model"), &staged).unwrap();
    std::fs::rename(&staged, &path).unwrap();
    host.signal("HUP");
    host.wait_for_log("reloaded", Duration::from_secs(30));
    let swapped = Instant::now();
    let after_swap = || {
        answers
            .lock()
            .unwrap()
            .iter()
            .filter(|(t, _)| *t >= swapped)
            .count()
    };
    support::eventually("traffic after the reload", Duration::from_secs(10), || {
        after_swap() > 60
    });

    // A corrupt file: the reload fails and the echo model keeps serving.
    std::fs::write(&path, b"\0asm\x0d\0\x01\0garbage").unwrap();
    host.signal("HUP");
    host.wait_for_log("reload failed", Duration::from_secs(30));
    let at_failure = answers.lock().unwrap().len();
    support::eventually("echo still answering", Duration::from_secs(10), || {
        answers.lock().unwrap().len() > at_failure + 40
    });
    stop.store(true, Ordering::SeqCst);
    for client in clients {
        client.join().expect("a request failed during the reload");
    }

    let answers = answers.lock().unwrap();
    let before = answers.iter().filter(|(t, _)| *t < swapped).count();
    let after: Vec<&String> = answers
        .iter()
        .filter(|(t, _)| *t >= swapped)
        .map(|(_, m)| m)
        .collect();
    assert!(
        before > 50 && after.len() > 50,
        "{before} before, {} after",
        after.len()
    );
    assert!(answers.iter().any(|(_, m)| m == "digits"));
    assert!(
        after.iter().all(|m| *m == "echo"),
        "an old instance answered after the swap"
    );
    let health = host.get("/health").json();
    assert_eq!(
        health["instances"]["total"], 4,
        "old instances retired: {health}"
    );
    assert_eq!(host.get("/v2/models/echo/ready").status, 200);
    let _ = std::fs::remove_file(&path);
}

#[test]
fn a_reload_onto_a_stuck_model_fails_with_a_reason_and_signals_during_it_are_applied() {
    let model = support::scratch_file("model.wasm");
    std::fs::copy(guest("echo_model"), &model).unwrap();
    let host = Host::start(&model, &["--instances", "2"]);
    let echo =
        json!({ "inputs": [{ "name": "x", "shape": [1, 1], "datatype": "FP32", "data": [3] }] });
    std::fs::copy(guest("stuck_model"), &model).unwrap();
    host.signal("HUP");
    host.wait_for_log("reloading the model", Duration::from_secs(5));
    // While the reload waits on the stuck model: requests are served, and a
    // TTIN is queued, not lost.
    assert_eq!(host.post_json("/v2/models/echo/infer", &echo).status, 200);
    host.signal("TTIN");
    host.wait_for_log("received TTIN while", Duration::from_secs(5));
    host.wait_for_log("set-up deadline", Duration::from_secs(30));
    assert!(
        host.log().iter().any(|l| l.contains("reload failed")),
        "{}",
        host.log().join("\n")
    );
    host.wait_for_health("the TTIN applied", Duration::from_secs(5), |h| {
        h["instances"]["target"] == 3
    });
    assert_eq!(host.post_json("/v2/models/echo/infer", &echo).status, 200);
}

/// A folder laid out as KServe's storage initializer leaves `/mnt/models`:
/// each file copied in under the name it was uploaded with.
fn storage(name: &str, files: &[(&str, &Path)]) -> PathBuf {
    let dir = scratch_file(name);
    for (rel, from) in files {
        let path = dir.join(rel);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::copy(from, path).unwrap();
    }
    dir
}

/// The digits model's label for the first reference row, from `model`.
fn digits_label(host: &Host, model: &str, input: &str) -> Value {
    let response = host.post_json(
        &format!("/v2/models/{model}/infer"),
        &json!({"inputs": [{"name": input, "shape": [1, 64], "datatype": "FP32",
                            "data": support::digits_row()}],
                "outputs": [{"name": "label"}]}),
    );
    assert_eq!(
        response.status,
        200,
        "{}",
        String::from_utf8_lossy(&response.body)
    );
    response.json()["outputs"][0]["data"][0].clone()
}

#[test]
fn a_folder_given_as_the_model_serves_its_one_wasm_file_under_model_name() {
    let dir = storage(
        "kserve-wasm",
        &[("digits-classifier.wasm", &guest("guest_model"))],
    );
    let host = Host::start_without_model(
        &[
            "--model-name",
            "kserve-digits",
            dir.to_str().unwrap(),
            "--instances",
            "1",
        ],
        &[],
    );
    let want = support::reference()["predicted_labels"][0].clone();
    assert_eq!(digits_label(&host, "kserve-digits", "x"), want);
    // Under the name KServe gave it, not the one the model declares.
    assert_eq!(host.get("/v2/models/digits").status, 404);
}

#[test]
fn a_folder_given_as_the_model_packs_its_one_onnx_file_under_model_name() {
    let onnx = support::workspace_root().join("guest-model/weights/digits_mlp.onnx");
    let dir = storage("kserve-onnx", &[("sklearn_digits.onnx", &onnx)]);
    let host = Host::start_without_model(
        &[
            "--model-name",
            "sklearn-digits",
            dir.to_str().unwrap(),
            "--instances",
            "1",
        ],
        &[],
    );
    let want = support::reference()["predicted_labels"][0].clone();
    assert_eq!(digits_label(&host, "sklearn-digits", "input"), want);
}

#[test]
fn a_folder_of_model_folders_given_as_the_model_is_a_repository_whatever_the_file_names() {
    // KServe's model agent puts each TrainedModel under /mnt/models/NAME/.
    let dir = storage(
        "kserve-repository",
        &[
            ("digits/uploaded-digits.wasm", &guest("guest_model")),
            ("echo/1/model.wasm", &guest("echo_model")),
        ],
    );
    let host = Host::start_without_model(
        &[
            "--model-name",
            "ignored",
            dir.to_str().unwrap(),
            "--instances",
            "1",
        ],
        &[],
    );
    let want = support::reference()["predicted_labels"][0].clone();
    assert_eq!(digits_label(&host, "digits", "x"), want);
    assert_eq!(host.get("/v2/models/echo/ready").status, 200);
    assert!(
        host.log()
            .iter()
            .any(|line| line.contains("--model-name ignored names no model")),
        "{:?}",
        host.log()
    );
}

#[test]
fn a_folder_with_two_model_files_is_refused_with_what_to_do_and_a_usage_exit() {
    let dir = storage(
        "kserve-ambiguous",
        &[
            ("a.wasm", &guest("guest_model")),
            ("b.wasm", &guest("echo_model")),
        ],
    );
    let (status, _, stderr) = support::run_command(&[
        "--model-name",
        "m",
        dir.to_str().unwrap(),
        "--bind",
        "127.0.0.1:0",
    ]);
    assert_eq!(status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("holds 2 model files (a.wasm, b.wasm)")
            && stderr.contains("keep one, or name the one to serve model.wasm"),
        "{stderr}"
    );
}

#[test]
fn a_model_file_linked_from_outside_the_folder_given_is_refused() {
    let outside = scratch_file("kserve-outside");
    std::fs::create_dir_all(&outside).unwrap();
    std::fs::copy(guest("guest_model"), outside.join("secret.wasm")).unwrap();
    let dir = scratch_file("kserve-escape");
    std::fs::create_dir_all(&dir).unwrap();
    std::os::unix::fs::symlink(outside.join("secret.wasm"), dir.join("model.wasm")).unwrap();
    let (status, _, stderr) =
        support::run_command(&[dir.to_str().unwrap(), "--bind", "127.0.0.1:0"]);
    assert_eq!(status.code(), Some(3), "{stderr}");
    assert!(stderr.contains("leads outside"), "{stderr}");
    assert!(!stderr.contains("secret.wasm"), "{stderr}");
}
