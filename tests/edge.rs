//! The edge: what crosses the wire and what operators read from it. Request
//! validation and 4xx errors, binary tensors, compression, percent-decoded
//! names, non-finite floats, Triton's classification and parameters, the
//! metrics, JSON logs, and the fuzzed decoders (`decoders`).

#[path = "edge/decoders.rs"]
mod decoders;
mod support;

use std::io::{Read, Write};
use std::process::{Command, Stdio};
use std::time::Duration;

use serde_json::{Value, json};
use support::{Client, FAULT_INFER, Host, fault_action, guest, reference, request};

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
        support::assert_close(&Value::Array(got), want, row, "binary infer");
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
fn every_outcome_is_counted_in_metrics_that_promtool_accepts() {
    let host = Host::start(
        &guest("fault_model"),
        &[
            "--instances",
            "1",
            "--timeout",
            "300ms",
            "--memory-limit",
            "32MiB",
            "--max-queue",
            "0",
        ],
    );
    let expect = [
        (fault_action(0, 1), 200),
        (fault_action(1, 0), 500),
        (fault_action(2, 0), 504),
        (fault_action(3, 64), 507),
        (fault_action(99, 0), 400),
    ];
    for (action, status) in &expect {
        assert_eq!(host.post_json(FAULT_INFER, action).status, *status);
        // With no queue, wait for a replaced instance to be back.
        host.wait_for_health("the instance back", Duration::from_secs(10), |h| {
            h["instances"]["idle"] == 1
        });
    }
    // Overloaded: the only instance is busy and the queue holds nobody.
    let mut busy = Client::connect(host.addr).unwrap();
    busy.send_only(
        "POST",
        FAULT_INFER,
        &serde_json::to_vec(&fault_action(4, 1000)).unwrap(),
    );
    host.wait_for_health("the only instance busy", Duration::from_secs(5), |h| {
        h["instances"]["busy"] == 1
    });
    assert_eq!(host.post_json(FAULT_INFER, &fault_action(0, 1)).status, 503);

    let response = host.get("/metrics");
    assert_eq!(response.status, 200);
    assert!(
        response
            .header("content-type")
            .unwrap()
            .starts_with("text/plain")
    );
    let text = String::from_utf8(response.body).unwrap();
    for outcome in [
        "success",
        "trap",
        "timeout",
        "memory_cap",
        "bad_input",
        "overloaded",
    ] {
        let line = format!(
            "wasm_host_inference_requests_total{{model=\"fault\",version=\"1\",outcome=\"{outcome}\"}} 1"
        );
        assert!(text.contains(&line), "missing {line} in\n{text}");
    }
    for cause in ["trap", "timeout", "memory_cap"] {
        let line = format!(
            "wasm_host_instance_replacements_total{{model=\"fault\",version=\"1\",cause=\"{cause}\"}} 1"
        );
        assert!(text.contains(&line), "missing {line}");
    }
    for name in [
        "wasm_host_inference_queue_duration_seconds_count",
        "wasm_host_inference_compute_duration_seconds_count",
        "wasm_host_pending_requests{model=\"fault\",version=\"1\"} 1",
        "wasm_host_instances{model=\"fault\",version=\"1\"} 1",
        "wasm_host_instances_busy{model=\"fault\",version=\"1\"} 1",
        "wasm_host_instance_memory_bytes{model=\"fault\",instance=",
    ] {
        assert!(text.contains(name), "missing {name}");
    }

    let mut promtool = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("promtool is missing: install it with `apt-get install prometheus` (.ci/run does)");
    promtool
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let checked = promtool.wait_with_output().unwrap();
    assert!(
        checked.status.success(),
        "promtool: {}{}",
        String::from_utf8_lossy(&checked.stdout),
        String::from_utf8_lossy(&checked.stderr)
    );
}

#[test]
fn json_logs_are_one_json_object_per_line_with_access_lines() {
    let host = Host::start(
        &guest("guest_model"),
        &["--instances", "1", "--log-format", "json", "--access-log"],
    );
    let ok = host.post_json("/predict", &json!({ "inputs": [vec![0.5; 64]] }));
    assert_eq!(ok.status, 200);
    assert_eq!(host.get("/nowhere").status, 404);
    host.wait_for_log("/nowhere", Duration::from_secs(5));
    let lines = host.log();
    let parsed: Vec<Value> = lines
        .iter()
        .map(|line| serde_json::from_str(line).unwrap_or_else(|e| panic!("{e}: {line}")))
        .collect();
    let access: Vec<&Value> = parsed.iter().filter(|l| l["target"] == "access").collect();
    assert_eq!(access.len(), 2, "{lines:#?}");
    assert_eq!(access[0]["method"], "POST");
    assert_eq!(access[0]["path"], "/predict");
    assert_eq!(access[0]["status"], 200);
    assert_eq!(access[0]["instance"], ok.instance().to_string());
    assert!(access[0]["latency_us"].is_u64());
    assert_eq!(access[1]["status"], 404);
}

fn compress(data: &[u8], coding: &str) -> Vec<u8> {
    let level = flate2::Compression::default();
    match coding {
        "gzip" => {
            let mut encoder = flate2::write::GzEncoder::new(Vec::new(), level);
            encoder.write_all(data).unwrap();
            encoder.finish().unwrap()
        }
        _ => {
            let mut encoder = flate2::write::ZlibEncoder::new(Vec::new(), level);
            encoder.write_all(data).unwrap();
            encoder.finish().unwrap()
        }
    }
}

fn decompress(data: &[u8], coding: &str) -> Vec<u8> {
    let mut out = Vec::new();
    match coding {
        "gzip" => flate2::read::GzDecoder::new(data).read_to_end(&mut out),
        _ => flate2::read::ZlibDecoder::new(data).read_to_end(&mut out),
    }
    .unwrap();
    out
}

#[test]
fn gzip_and_deflate_bodies_are_decoded_and_a_bomb_is_held_to_max_body() {
    let host = Host::start(&guest("guest_model"), &["--max-body", "1MiB"]);
    let want = support::reference()["predicted_labels"][0].clone();
    for coding in ["gzip", "deflate"] {
        let body = compress(&support::digits_infer_body(), coding);
        let response = request(
            host.addr,
            "POST",
            "/v2/models/digits/infer",
            &[
                ("Content-Type", "application/json"),
                ("Content-Encoding", coding),
                ("Accept-Encoding", coding),
            ],
            &body,
        )
        .unwrap();
        assert_eq!(response.status, 200, "{coding}");
        assert_eq!(response.header("content-encoding"), Some(coding));
        let answer: Value = serde_json::from_slice(&decompress(&response.body, coding)).unwrap();
        assert_eq!(answer["outputs"][0]["data"][0], want, "{coding}: {answer}");
    }
    // 10 MiB of spaces compress to a few KiB: under --max-body on the wire,
    // far over it once decompressed.
    let bomb = compress(&vec![b' '; 10 << 20], "gzip");
    assert!(bomb.len() < 64 << 10);
    // Each bad body gets its own status and a message that names the problem.
    let cases: [(&str, &[u8], u16, &str); 3] = [
        ("gzip", &bomb, 413, "once decompressed"),
        ("br", b"...", 415, "gzip or deflate"),
        ("gzip", b"not gzip at all", 400, "not valid gzip"),
    ];
    for (coding, body, status, needle) in cases {
        let response = request(
            host.addr,
            "POST",
            "/v2/models/digits/infer",
            &[("Content-Encoding", coding)],
            body,
        )
        .unwrap();
        assert_eq!(response.status, status, "{coding}");
        assert!(response.error().contains(needle), "{}", response.error());
    }
}

#[test]
fn every_metric_label_exists_from_the_start_and_a_client_that_leaves_is_counted() {
    let host = Host::start(&guest("fault_model"), &["--instances", "1"]);
    for cause in ["trap", "timeout", "memory_cap", "cancelled", "recycled"] {
        let series = format!(
            "wasm_host_instance_replacements_total{{model=\"fault\",version=\"1\",cause=\"{cause}\"}} "
        );
        assert_eq!(host.metric(&series), 0.0, "{cause}");
    }
    let cancelled =
        "wasm_host_inference_requests_total{model=\"fault\",version=\"1\",outcome=\"cancelled\"} ";
    assert_eq!(host.metric(cancelled), 0.0);
    let mut client = Client::connect(host.addr).unwrap();
    client.send_only(
        "POST",
        FAULT_INFER,
        &serde_json::to_vec(&fault_action(4, 2_000)).unwrap(),
    );
    // The client leaves once the guest is in its call.
    host.wait_for_health("the guest called", Duration::from_secs(5), |h| {
        h["calls"] == 1
    });
    drop(client);
    host.wait_for_metric(cancelled, 1.0, Duration::from_secs(5));
    assert_eq!(
        host.metric("wasm_host_instances_missing{model=\"fault\",version=\"1\"} "),
        0.0
    );
    assert_eq!(host.get("/health").json()["instances"]["missing"], 0);
}

#[test]
fn model_names_in_paths_are_percent_decoded() {
    let host = Host::start(&guest("echo_model"), &[]);
    let body =
        json!({ "inputs": [{ "name": "x", "shape": [1, 1], "datatype": "FP32", "data": [2] }] });
    let response = host.post_json("/v2/models/ech%6F/infer", &body);
    assert_eq!(
        response.status,
        200,
        "{}",
        String::from_utf8_lossy(&response.body)
    );
    assert_eq!(host.get("/v2/models/%65cho/ready").status, 200);
    assert_eq!(host.get("/v2/models/echo%zz/ready").status, 404);
}

#[test]
fn inference_header_content_length_takes_digits_only() {
    let host = Host::start(&guest("guest_model"), &[]);
    let body = support::digits_infer_body();
    let len = body.len().to_string();
    for bad in [
        format!("+{len}"),
        format!("-{len}"),
        " ".into(),
        "0x10".into(),
    ] {
        let response = request(
            host.addr,
            "POST",
            "/v2/models/digits/infer",
            &[("Inference-Header-Content-Length", &bad)],
            &body,
        )
        .unwrap();
        assert_eq!(response.status, 400, "{bad:?}");
        assert!(
            response.error().contains("digits only"),
            "{}",
            response.error()
        );
    }
    let response = request(
        host.addr,
        "POST",
        "/v2/models/digits/infer",
        &[("Inference-Header-Content-Length", &len)],
        &body,
    )
    .unwrap();
    assert_eq!(response.status, 200);
}

#[test]
fn non_finite_floats_travel_as_strings_in_json_and_out_of_range_inputs_are_refused() {
    let host = Host::start(&guest("echo_model"), &[]);
    // Binary in: NaN and the infinities exactly; JSON out: as strings.
    let values = [f32::NAN, f32::INFINITY, f32::NEG_INFINITY, 1.5];
    let raw: Vec<u8> = values.iter().flat_map(|v| v.to_le_bytes()).collect();
    let header = serde_json::to_vec(&json!({
        "inputs": [{ "name": "x", "shape": [1, 4], "datatype": "FP32",
                     "parameters": { "binary_data_size": raw.len() } }]
    }))
    .unwrap();
    let mut body = header.clone();
    body.extend_from_slice(&raw);
    let response = request(
        host.addr,
        "POST",
        "/v2/models/echo/infer",
        &[("Inference-Header-Content-Length", &header.len().to_string())],
        &body,
    )
    .unwrap();
    assert_eq!(response.status, 200);
    let want = json!(["NaN", "Infinity", "-Infinity", 1.5]);
    assert_eq!(response.json()["outputs"][0]["data"], want);
    // The same strings are read back in JSON inputs.
    let round_trip = host.post_json(
        "/v2/models/echo/infer",
        &json!({ "inputs": [{ "name": "x", "shape": [1, 4], "datatype": "FP32", "data": want }] }),
    );
    assert_eq!(round_trip.json()["outputs"][0]["data"], want);
    // 1e39 is no FP32: a 400, not a silent infinity.
    let response = host.post_json(
        "/v2/models/echo/infer",
        &json!({ "inputs": [{ "name": "x", "shape": [1, 1], "datatype": "FP32", "data": [1e39] }] }),
    );
    assert_eq!(response.status, 400);
    assert!(
        response.error().contains("outside FP32's range"),
        "{}",
        response.error()
    );
}

const ECHO_INFER: &str = "/v2/models/echo/infer";

/// An echo request (y = x) with these rows, asking for `y` with `output`'s
/// parameters.
fn echo(rows: &[&[f32]], output: Value) -> Value {
    let width = rows.first().map_or(0, |r| r.len());
    let data: Vec<f32> = rows.iter().flat_map(|r| r.iter().copied()).collect();
    json!({
        "inputs": [{ "name": "x", "shape": [rows.len(), width], "datatype": "FP32", "data": data }],
        "outputs": [{ "name": "y", "parameters": output }],
    })
}

#[test]
fn classification_returns_each_rows_top_k_as_score_index_strings() {
    let host = Host::start(&guest("echo_model"), &["--instances", "1"]);
    let rows: [&[f32]; 2] = [&[0.1, 0.7, 0.15, 0.05], &[0.5, 0.0, 0.25, 0.25]];
    let response = host.post_json(ECHO_INFER, &echo(&rows, json!({ "classification": 3 })));
    assert_eq!(response.status, 200, "{}", response.error());
    let y = &response.json()["outputs"][0];
    assert_eq!(y["datatype"], "BYTES");
    assert_eq!(y["shape"], json!([2, 3]));
    // Best first; the tie between indices 2 and 3 goes to the lower index.
    assert_eq!(
        y["data"],
        json!([
            "0.700000:1",
            "0.150000:2",
            "0.100000:0",
            "0.500000:0",
            "0.250000:2",
            "0.250000:3"
        ])
    );
    assert!(response.header("x-instance-id").is_some());
}

#[test]
fn classification_ranks_every_class_past_their_count_is_off_at_zero_and_travels_as_binary() {
    let host = Host::start(&guest("echo_model"), &["--instances", "1"]);
    let rows: [&[f32]; 1] = [&[0.2, 0.3, 0.5]];
    // k larger than the classes: every class, ranked.
    let all = host.post_json(ECHO_INFER, &echo(&rows, json!({ "classification": 10 })));
    assert_eq!(all.json()["outputs"][0]["shape"], json!([1, 3]));
    assert_eq!(
        all.json()["outputs"][0]["data"],
        json!(["0.500000:2", "0.300000:1", "0.200000:0"])
    );
    // 0 is Triton's "no classification": the tensor as it is.
    let raw = host.post_json(ECHO_INFER, &echo(&rows, json!({ "classification": 0 })));
    assert_eq!(raw.json()["outputs"][0]["datatype"], "FP32");
    assert_eq!(raw.json()["outputs"][0]["data"], json!([0.2, 0.3, 0.5]));
    // A negative or fractional count is the client's mistake.
    for bad in [json!(-1), json!(1.5), json!("three")] {
        let response = host.post_json(ECHO_INFER, &echo(&rows, json!({ "classification": bad })));
        assert_eq!(response.status, 400, "{bad}: {}", response.error());
        assert!(
            response.error().contains("classification"),
            "{}",
            response.error()
        );
    }
    // In binary form, the strings follow the JSON header as BYTES elements.
    let binary = host.post_json(
        ECHO_INFER,
        &echo(&rows, json!({ "classification": 1, "binary_data": true })),
    );
    assert_eq!(binary.status, 200);
    let json_len: usize = binary
        .header("inference-header-content-length")
        .unwrap()
        .parse()
        .unwrap();
    let (header, data) = binary.body.split_at(json_len);
    let header: Value = serde_json::from_slice(header).unwrap();
    assert_eq!(header["outputs"][0]["parameters"]["binary_data_size"], 14);
    assert_eq!(data, b"\x0a\x00\x00\x000.500000:2");
}

#[test]
fn classification_of_a_bytes_output_is_refused_before_the_model_runs() {
    let host = Host::start(&guest("fault_model"), &["--instances", "1"]);
    let mut request = fault_action(0, 1);
    request["outputs"] = json!([{ "name": "text", "parameters": { "classification": 2 } }]);
    let response = host.post_json(FAULT_INFER, &request);
    assert_eq!(response.status, 400, "{}", response.error());
    assert!(
        response.error().contains("numeric output"),
        "{}",
        response.error()
    );
    assert_eq!(host.get("/health").json()["calls"], 0);
}

#[test]
fn sequence_and_priority_parameters_are_refused_and_say_so() {
    let host = Host::start(&guest("echo_model"), &["--instances", "1"]);
    let rows: [&[f32]; 1] = [&[1.0]];
    for (name, value) in [
        ("sequence_id", json!(42)),
        ("sequence_start", json!(true)),
        ("sequence_end", json!(true)),
        ("priority", json!(2)),
    ] {
        let mut request = echo(&rows, json!({}));
        request["parameters"] = json!({ name: value });
        let response = host.post_json(ECHO_INFER, &request);
        assert_eq!(response.status, 400, "{name}: {}", response.error());
        let error = response.error();
        assert!(
            error.contains(name) && error.contains("not supported"),
            "{error}"
        );
    }
    // Their "off" values, which clients may send by default, are fine, and
    // are neither passed to the model nor echoed; others still are.
    let mut request = echo(&rows, json!({}));
    request["parameters"] = json!({
        "sequence_id": 0, "sequence_start": false, "priority": 0, "scale": 3, "timeout": 0
    });
    let response = host.post_json(ECHO_INFER, &request);
    assert_eq!(response.status, 200, "{}", response.error());
    assert_eq!(response.json()["parameters"], json!({ "scale": 3 }));
    assert_eq!(response.json()["outputs"][0]["data"], json!([3.0]));
}
