//! The foundation's promises, each driven over real HTTP against the real
//! binary serving real components built from this repo.

mod support;

use std::collections::HashMap;
use std::ffi::OsStr;
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use support::{Client, Host, guest, reference, request, run_command, scratch_file};

fn assert_close(got: &Value, want: &Value, row: usize, endpoint: &str) {
    let (got, want) = (got.as_array().unwrap(), want.as_array().unwrap());
    assert_eq!(got.len(), want.len(), "row {row} via {endpoint}");
    for (g, w) in got.iter().zip(want) {
        let (g, w) = (g.as_f64().unwrap(), w.as_f64().unwrap());
        assert!(
            (g - w).abs() <= 1e-5,
            "row {row} via {endpoint}: probability {g} differs from scikit-learn's {w}"
        );
    }
}

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
        assert_close(
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
        assert_close(
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
    std::thread::sleep(Duration::from_millis(500));
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
fn a_guest_over_its_memory_cap_fails_alone_with_507_and_the_host_stays_bounded() {
    let host = Host::start(
        &guest("fault_model"),
        &["--instances", "2", "--memory-limit", "32MiB"],
    );
    let action = |kind: i64, arg: i64| json!({ "inputs": [{ "name": "action", "shape": [2], "datatype": "INT64", "data": [kind, arg] }] });
    // Within the cap: fine.
    let small = host.post_json("/v2/models/fault/infer", &action(3, 8));
    assert_eq!(small.status, 200, "{}", small.error());

    let baseline = host.rss();
    for _ in 0..20 {
        let hog = host.post_json("/v2/models/fault/infer", &action(3, 64));
        assert_eq!(hog.status, 507);
        let message = hog.error();
        assert!(message.contains("memory cap of 32 MiB"), "{message}");
        hog.instance();

        let next = host.post_json("/v2/models/fault/infer", &action(0, 7));
        assert_eq!(next.status, 200, "{}", next.error());
        assert_eq!(next.json()["outputs"][0]["data"], json!([7]));
    }
    // Twenty hogs that each touched up to 32 MiB leave no trace behind.
    let after = host.rss();
    assert!(
        after < baseline + 3 * (32 << 20),
        "host RSS grew from {baseline} to {after} bytes"
    );
    let health = host.get("/health").json();
    assert_eq!(health["instances"]["total"], 2);
}

#[test]
fn bad_requests_get_a_4xx_json_error_and_never_reach_the_model() {
    let host = Host::start(
        &guest("guest_model"),
        &["--instances", "1", "--max-body", "4KiB"],
    );
    let row = json!(vec![0.0; 64]);
    let calls_before = host.get("/health").json()["calls"].clone();
    let post = |path: &str, content_type: &str, body: &[u8]| {
        request(
            host.addr,
            "POST",
            path,
            &[("Content-Type", content_type)],
            body,
        )
        .unwrap()
    };
    let json_body = |value: Value| serde_json::to_vec(&value).unwrap();
    let infer = "/v2/models/digits/infer";
    // (what, status, body, path, content type, what the error must mention)
    type Case<'a> = (&'a str, u16, Vec<u8>, &'a str, &'a str, &'a str);
    let cases: Vec<Case> = vec![
        (
            "malformed JSON",
            400,
            b"{\"inputs\": [".to_vec(),
            infer,
            "application/json",
            "malformed JSON",
        ),
        (
            "wrong shape",
            400,
            json_body(
                json!({"inputs": [{"name": "x", "shape": [1, 63], "datatype": "FP32", "data": vec![0.0; 63]}]}),
            ),
            infer,
            "application/json",
            "expects [-1, 64]",
        ),
        (
            "shape and data disagree",
            400,
            json_body(
                json!({"inputs": [{"name": "x", "shape": [1, 64], "datatype": "FP32", "data": [1.0]}]}),
            ),
            infer,
            "application/json",
            "its data holds 1",
        ),
        (
            "wrong datatype",
            400,
            json_body(
                json!({"inputs": [{"name": "x", "shape": [1, 64], "datatype": "INT64", "data": vec![0; 64]}]}),
            ),
            infer,
            "application/json",
            "expects FP32",
        ),
        (
            "unknown datatype",
            400,
            json_body(
                json!({"inputs": [{"name": "x", "shape": [1, 64], "datatype": "FLOAT", "data": row}]}),
            ),
            infer,
            "application/json",
            "unknown datatype",
        ),
        (
            "unknown input",
            400,
            json_body(
                json!({"inputs": [{"name": "pixels", "shape": [1, 64], "datatype": "FP32", "data": row}]}),
            ),
            infer,
            "application/json",
            "has no input \"pixels\"",
        ),
        (
            "missing inputs",
            400,
            json_body(json!({"id": "1"})),
            infer,
            "application/json",
            "missing field `inputs`",
        ),
        (
            "a string among numbers",
            400,
            json_body(json!({"inputs": [vec!["a"; 64]]})),
            "/predict",
            "application/json",
            "not a valid FP32",
        ),
        (
            "ragged rows",
            400,
            json_body(json!({"inputs": [[1.0, 2.0], [3.0]]})),
            "/predict",
            "application/json",
            "ragged",
        ),
        (
            "unknown requested output",
            400,
            json_body(
                json!({"inputs": [{"name": "x", "shape": [1, 64], "datatype": "FP32", "data": row}], "outputs": [{"name": "logits"}]}),
            ),
            infer,
            "application/json",
            "has no output \"logits\"",
        ),
        (
            "unknown model",
            404,
            json_body(json!({})),
            "/v2/models/cats/infer",
            "application/json",
            "unknown model \"cats\"",
        ),
        (
            "unknown route",
            404,
            json_body(json!({})),
            "/v1/models/digits:predict",
            "application/json",
            "no route",
        ),
        (
            "body too large",
            413,
            vec![b' '; 8 * 1024],
            infer,
            "application/json",
            "--max-body",
        ),
        (
            "not JSON",
            415,
            b"x".to_vec(),
            infer,
            "image/png",
            "application/json",
        ),
    ];
    for (what, status, body, path, content_type, needle) in cases {
        let response = post(path, content_type, &body);
        assert_eq!(
            response.status,
            status,
            "{what}: {}",
            String::from_utf8_lossy(&response.body)
        );
        let message = response.error();
        assert!(
            message.contains(needle),
            "{what}: {message:?} should mention {needle:?}"
        );
        assert!(
            response.header("x-instance-id").is_none(),
            "{what} reached an instance"
        );
    }

    let wrong_method = host.get(infer);
    assert_eq!(wrong_method.status, 405);
    assert_eq!(wrong_method.header("allow"), Some("POST"));
    assert!(wrong_method.error().contains("takes POST"));
    let wrong_method = request(host.addr, "DELETE", "/health", &[], b"").unwrap();
    assert_eq!(wrong_method.status, 405);

    assert_eq!(
        host.get("/health").json()["calls"],
        calls_before,
        "the model was called"
    );
    // And the host still serves.
    let ok = host.post_json("/predict", &json!({ "inputs": [row] }));
    assert_eq!(ok.status, 200);
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

#[test]
fn a_trapping_request_fails_alone_and_its_instance_gets_a_new_id() {
    let host = Host::start(&guest("fault_model"), &["--instances", "1"]);
    let action = |kind: i64, arg: i64| json!({ "inputs": [{ "name": "action", "shape": [2], "datatype": "INT64", "data": [kind, arg] }] });
    let first = host.post_json("/v2/models/fault/infer", &action(0, 1));
    assert_eq!(first.status, 200);
    let trap = host.post_json("/v2/models/fault/infer", &action(1, 0));
    assert_eq!(trap.status, 500);
    assert_eq!(trap.instance(), first.instance());
    let message = trap.error();
    assert!(message.contains("trapped"), "{message}");
    assert!(message.contains("asked to panic"), "{message}");

    let next = host.post_json("/v2/models/fault/infer", &action(0, 2));
    assert_eq!(next.status, 200);
    assert_ne!(
        next.instance(),
        first.instance(),
        "a replaced instance gets a new id"
    );
    assert_eq!(host.get("/health").json()["instances"]["replaced"], 1);
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
fn bad_startup_exits_nonzero_with_one_line_that_says_what_to_do() {
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
fn binary_tensor_data_round_trips_through_the_infer_endpoint() {
    let host = Host::start(&guest("guest_model"), &["--instances", "1"]);
    let reference = reference();
    let rows = reference["inputs"].as_array().unwrap();
    let mut tensor = Vec::new();
    for value in rows.iter().flat_map(|r| r.as_array().unwrap()) {
        tensor.extend_from_slice(&(value.as_f64().unwrap() as f32).to_le_bytes());
    }
    let header = serde_json::to_vec(&json!({
        "id": "bin",
        "inputs": [{ "name": "x", "shape": [200, 64], "datatype": "FP32",
                     "parameters": { "binary_data_size": tensor.len() } }],
        "outputs": [
            { "name": "probabilities", "parameters": { "binary_data": true } },
            { "name": "label", "parameters": { "binary_data": false } },
        ],
    }))
    .unwrap();
    let mut body = header.clone();
    body.extend_from_slice(&tensor);
    let length = header.len().to_string();
    let response = request(
        host.addr,
        "POST",
        "/v2/models/digits/infer",
        &[
            ("Content-Type", "application/octet-stream"),
            ("Inference-Header-Content-Length", &length),
        ],
        &body,
    )
    .unwrap();
    assert_eq!(
        response.status,
        200,
        "{}",
        String::from_utf8_lossy(&response.body)
    );
    let json_len: usize = response
        .header("inference-header-content-length")
        .expect("binary outputs come with the header length")
        .parse()
        .unwrap();
    let head: Value = serde_json::from_slice(&response.body[..json_len]).unwrap();
    assert_eq!(head["id"], "bin");
    let outputs = head["outputs"].as_array().unwrap();
    assert_eq!(outputs[0]["name"], "probabilities");
    assert_eq!(outputs[0]["parameters"]["binary_data_size"], 200 * 10 * 4);
    assert!(outputs[0].get("data").is_none());
    assert_eq!(&outputs[1]["data"], &reference["predicted_labels"]);
    let probabilities: Vec<f32> = response.body[json_len..]
        .chunks_exact(4)
        .map(|b| f32::from_le_bytes(b.try_into().unwrap()))
        .collect();
    assert_eq!(probabilities.len(), 2000);
    let want = reference["probabilities"].as_array().unwrap();
    for (row, want) in want.iter().enumerate() {
        let got: Vec<Value> = probabilities[row * 10..row * 10 + 10]
            .iter()
            .map(|&p| json!(p))
            .collect();
        assert_close(&Value::Array(got), want, row, "binary infer");
    }

    // Binary bytes that no input claims are a 400, not silently dropped.
    let stray = request(
        host.addr,
        "POST",
        "/v2/models/digits/infer",
        &[("Inference-Header-Content-Length", &length)],
        &[&body[..], b"xx"].concat(),
    )
    .unwrap();
    assert_eq!(stray.status, 400);
    assert!(
        stray.error().contains("no input claims them"),
        "{}",
        stray.error()
    );
    assert!(
        host.get("/v2").json()["extensions"]
            .as_array()
            .unwrap()
            .contains(&json!("binary_tensor_data"))
    );
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
