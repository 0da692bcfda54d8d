//! Serving: a model file in, correct answers out. The 200 reference rows
//! match scikit-learn through both endpoints, slow requests spread over the
//! instances, health and metadata describe the server, settings come from
//! flags, environment and config file, and a bad start says what to do.

mod support;

use std::collections::HashMap;
use std::ffi::OsStr;
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use support::{Client, Host, guest, reference, run_command, scratch_file};

#[test]
fn every_reference_row_matches_scikit_learn_through_both_endpoints() {
    let host = Host::start(&guest("guest_model"), &["--instances", "2"]);
    let reference = reference();
    let inputs = reference["inputs"].as_array().unwrap();
    let labels = reference["predicted_labels"].as_array().unwrap();
    let probabilities = reference["probabilities"].as_array().unwrap();
    assert_eq!(inputs.len(), 200);
    let mut client = Client::connect(host.addr).unwrap();

    for (row, input) in inputs.iter().enumerate() {
        let simple = client
            .post_json("/predict", &json!({ "inputs": [input] }))
            .unwrap();
        assert_eq!(
            simple.status,
            200,
            "{}",
            String::from_utf8_lossy(&simple.body)
        );
        let body = simple.json();
        assert_eq!(body["prediction"], labels[row], "row {row} via /predict");
        assert_eq!(body["instance"].as_u64().unwrap(), simple.instance());
        support::assert_close(
            &body["outputs"]["probabilities"][0],
            &probabilities[row],
            row,
            "/predict",
        );

        let request = json!({
            "id": format!("row-{row}"),
            "parameters": { "trace": row },
            "inputs": [{ "name": "x", "shape": [1, 64], "datatype": "FP32", "data": input }],
        });
        let oip = client
            .post_json("/v2/models/digits/infer", &request)
            .unwrap();
        assert_eq!(oip.status, 200, "{}", String::from_utf8_lossy(&oip.body));
        oip.instance();
        let body = oip.json();
        assert_eq!(body["model_name"], "digits");
        assert_eq!(body["id"], format!("row-{row}"));
        assert_eq!(body["parameters"]["trace"], row, "parameters pass through");
        let outputs = body["outputs"].as_array().unwrap();
        let by_name = |name: &str| outputs.iter().find(|o| o["name"] == name).unwrap();
        assert_eq!(by_name("probabilities")["shape"], json!([1, 10]));
        assert_eq!(
            by_name("label")["data"][0],
            labels[row],
            "row {row} via infer"
        );
        support::assert_close(
            &by_name("probabilities")["data"],
            &probabilities[row],
            row,
            "infer",
        );
    }

    // The whole set as one batch, asking for one output only.
    let flat: Vec<Value> = inputs
        .iter()
        .flat_map(|r| r.as_array().unwrap().clone())
        .collect();
    let batch = host.post_json(
        "/v2/models/digits/infer",
        &json!({
            "inputs": [{ "name": "x", "shape": [200, 64], "datatype": "FP32", "data": flat }],
            "outputs": [{ "name": "label" }],
        }),
    );
    assert_eq!(batch.status, 200);
    let outputs = batch.json()["outputs"].as_array().unwrap().clone();
    assert_eq!(outputs.len(), 1, "only the requested output comes back");
    assert_eq!(&outputs[0]["data"], &reference["predicted_labels"]);
}

#[test]
fn slow_requests_are_spread_over_all_instances_and_health_stays_responsive() {
    let host = Host::start(&guest("slow_model"), &["--instances", "4"]);
    let addr = host.addr;
    let started = Instant::now();
    let workers: Vec<_> = (0..8)
        .map(|_| {
            std::thread::spawn(move || {
                let mut client = Client::connect(addr).unwrap();
                client
                    .post_json("/predict", &json!({ "inputs": [2000] }))
                    .unwrap()
            })
        })
        .collect();

    // While all four instances sleep, the host still answers at once.
    host.wait_for_health("all four instances busy", Duration::from_secs(5), |h| {
        h["instances"]["busy"] == 4
    });
    for _ in 0..5 {
        let asked = Instant::now();
        let health = host.get("/health");
        let took = asked.elapsed();
        assert_eq!(health.status, 200);
        assert_eq!(health.json()["instances"]["busy"], 4, "{:?}", health.json());
        assert!(
            took < Duration::from_millis(100),
            "/health took {took:?} while busy"
        );
        // Spread over the busy time on purpose: each probe a moment later.
        std::thread::sleep(Duration::from_millis(100));
    }

    let responses: Vec<_> = workers.into_iter().map(|w| w.join().unwrap()).collect();
    let elapsed = started.elapsed();
    let mut per_instance: HashMap<u64, usize> = HashMap::new();
    for response in &responses {
        assert_eq!(
            response.status,
            200,
            "{}",
            String::from_utf8_lossy(&response.body)
        );
        assert_eq!(response.json()["outputs"]["slept_ms"], json!([2000]));
        *per_instance.entry(response.instance()).or_default() += 1;
    }
    assert_eq!(per_instance.len(), 4, "served by {per_instance:?}");
    assert!(per_instance.values().all(|&n| n == 2), "{per_instance:?}");
    // Two rounds of 2 s on 4 instances: about 4 s, far from 8 s or 16 s.
    assert!(
        elapsed >= Duration::from_millis(3900) && elapsed < Duration::from_millis(6500),
        "8 requests of 2 s on 4 instances took {elapsed:?}"
    );
}

#[test]
fn health_and_metadata_endpoints_describe_the_server_and_model() {
    let host = Host::start(&guest("guest_model"), &["--instances", "3"]);
    let health = host.get("/health");
    assert_eq!(health.status, 200);
    let health = health.json();
    assert_eq!(health["instances"]["total"], 3);
    assert_eq!(health["instances"]["busy"], 0);
    assert_eq!(health["queue"]["depth"], 0);

    for path in [
        "/v2/health/live",
        "/v2/health/ready",
        "/v2/models/digits/ready",
    ] {
        let response = host.get(path);
        assert_eq!(response.status, 200, "{path}");
        assert!(response.body.is_empty(), "{path}");
    }
    assert_eq!(host.get("/v2/models/cats/ready").status, 404);
    assert_eq!(host.get("/v2").json()["name"], "wasm-host");

    let metadata = host.get("/v2/models/digits").json();
    assert_eq!(metadata["name"], "digits");
    assert_eq!(metadata["versions"], json!(["1"]));
    assert_eq!(
        metadata["inputs"],
        json!([{ "name": "x", "datatype": "FP32", "shape": [-1, 64] }])
    );
    assert_eq!(metadata["outputs"][0]["name"], "probabilities");
    assert_eq!(
        host.get("/v2/models/digits/versions/1").json()["name"],
        "digits"
    );

    // The start-up log names the model, the compile time and every instance.
    let log = host.log().join("\n");
    assert!(log.contains("loaded model digits v1"), "{log}");
    assert!(
        log.contains("compiled in") || log.contains("loaded from the compile cache in"),
        "{log}"
    );
    for id in 1..=3 {
        assert!(log.contains(&format!("booted instance {id} in")), "{log}");
    }
}

/// Runs the host until it exits and checks it failed with one actionable line.
fn assert_startup_fails(args: &[&OsStr], code: i32, needle: &str) {
    let (status, _, stderr) = run_command(args);
    assert_eq!(status.code(), Some(code), "{args:?}: {stderr}");
    let errors: Vec<&str> = stderr.lines().filter(|l| l.starts_with("error:")).collect();
    assert_eq!(
        errors.len(),
        1,
        "{args:?}: expected one error line in {stderr}"
    );
    assert!(
        errors[0].contains(needle),
        "{args:?}: {:?} should mention {needle:?}",
        errors[0]
    );
    assert!(!stderr.contains("Stack backtrace"), "{stderr}");
}

#[test]
fn a_bad_start_up_exits_nonzero_with_one_line_that_says_what_to_do() {
    fn with(path: &std::path::Path) -> Vec<&OsStr> {
        vec!["--bind".as_ref(), "127.0.0.1:0".as_ref(), path.as_os_str()]
    }

    let missing = scratch_file("missing.wasm");
    assert_startup_fails(&with(&missing), 3, "does not exist");

    let text = scratch_file("notes.wasm");
    std::fs::write(&text, "this is not wasm").unwrap();
    assert_startup_fails(&with(&text), 3, "not a WebAssembly file");

    // The smallest valid core module: magic and version 1.
    let core = scratch_file("core.wasm");
    std::fs::write(&core, b"\0asm\x01\0\0\0").unwrap();
    assert_startup_fails(&with(&core), 3, "core WebAssembly module, not a component");

    // The smallest valid component: it exports nothing at all.
    let empty = scratch_file("empty-component.wasm");
    std::fs::write(&empty, b"\0asm\x0d\0\x01\0").unwrap();
    assert_startup_fails(&with(&empty), 3, "does not export the model contract");

    let truncated = scratch_file("truncated.wasm");
    let model = std::fs::read(guest("guest_model")).unwrap();
    std::fs::write(&truncated, &model[..model.len() / 2]).unwrap();
    assert_startup_fails(&with(&truncated), 3, "failed to compile");

    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().to_string();
    let model = guest("guest_model");
    assert_startup_fails(
        &["--bind".as_ref(), port.as_ref(), model.as_os_str()],
        4,
        "already in use",
    );

    let (status, _, stderr) = run_command(&["--instances", "lots"]);
    assert_eq!(status.code(), Some(2), "{stderr}");

    for file in [text, core, empty, truncated] {
        let _ = std::fs::remove_file(file);
    }
}

#[test]
fn request_parameters_reach_the_model_and_come_back() {
    let host = Host::start(&guest("echo_model"), &["--instances", "1"]);
    let request = |parameters: Value| {
        json!({
            "parameters": parameters,
            "inputs": [{ "name": "x", "shape": [1, 3], "datatype": "FP32", "data": [1.0, -2.0, 0.5] }],
        })
    };
    let scaled = host.post_json(
        "/v2/models/echo/infer",
        &request(json!({ "scale": 2, "note": "hi" })),
    );
    assert_eq!(
        scaled.status,
        200,
        "{}",
        String::from_utf8_lossy(&scaled.body)
    );
    let body = scaled.json();
    assert_eq!(
        body["outputs"][0]["data"],
        json!([2.0, -4.0, 1.0]),
        "the model used scale"
    );
    assert_eq!(body["parameters"], json!({ "scale": 2, "note": "hi" }));

    let plain = host.post_json("/v2/models/echo/infer", &request(json!({})));
    assert_eq!(plain.json()["outputs"][0]["data"], json!([1.0, -2.0, 0.5]));
    let bad = host.post_json(
        "/v2/models/echo/infer",
        &request(json!({ "scale": "lots" })),
    );
    assert_eq!(bad.status, 400);
    assert!(
        bad.error().contains("scale: lots is not a number"),
        "{}",
        bad.error()
    );
}

#[test]
fn settings_come_from_flags_then_environment_then_the_config_file() {
    let config = scratch_file("wasm-host.toml");
    std::fs::write(
        &config,
        "instances = 3\nmax-queue = 7\nmax-body = \"1KiB\"\ntimeout = \"2s\"\n",
    )
    .unwrap();
    let host = Host::start_with_env(
        &guest("guest_model"),
        &["--config", config.to_str().unwrap(), "--instances", "2"],
        &[("WASM_HOST_MAX_QUEUE", "9")],
    );
    let health = host.get("/health").json();
    assert_eq!(
        health["instances"]["total"], 2,
        "the flag wins over the file"
    );
    assert_eq!(
        health["queue"]["max"], 9,
        "the environment wins over the file"
    );
    let big = json!({ "inputs": [vec![0.25; 64]], "padding": "x".repeat(2048) });
    assert_eq!(
        host.post_json("/predict", &big).status,
        413,
        "the file's max-body applies"
    );

    std::fs::write(&config, "instances = 2\nbogus = 1\n").unwrap();
    let (status, _, stderr) = run_command(&["--config", config.to_str().unwrap(), "x.wasm"]);
    assert_eq!(status.code(), Some(2));
    assert!(stderr.contains("unknown setting `bogus`"), "{stderr}");
    let _ = std::fs::remove_file(config);
}

#[test]
fn bind_accepts_a_host_name_and_a_bare_port() {
    let model = guest("echo_model");
    let host = Host::start_at(&model, "localhost:0", &["--instances", "1"]);
    assert!(host.addr.ip().is_loopback(), "{}", host.addr);
    assert_eq!(host.get("/health").status, 200);
    drop(host);

    let host = Host::start_at(&model, ":0", &["--instances", "1"]);
    assert!(host.addr.ip().is_unspecified(), "{}", host.addr);
    let local = std::net::SocketAddr::from(([127, 0, 0, 1], host.addr.port()));
    let response = support::request(local, "GET", "/health", &[], b"").unwrap();
    assert_eq!(response.status, 200);
    host.wait_for_log("serves beyond this machine", Duration::from_secs(30));

    let (status, _, stderr) = run_command(&["--bind", "localhost", model.to_str().unwrap()]);
    assert_eq!(status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains(":PORT"),
        "the error shows the accepted forms: {stderr}"
    );
}

#[test]
fn memory_limit_takes_kubernetes_units_and_help_lists_metrics() {
    let host = Host::start(
        &guest("echo_model"),
        &["--instances", "1", "--memory-limit", "128Mi"],
    );
    host.wait_for_log("memory limit 128 MiB each", Duration::from_secs(30));
    let (status, stdout, _) = run_command(&["--help"]);
    assert!(status.success());
    assert!(stdout.contains("GET  /metrics"), "{stdout}");
}
