//! What Triton's clients send beyond plain inference, over HTTP:
//! the classification extension (an output's `classification: k`) and the
//! request parameters Triton gives meaning to (`timeout` tightens the
//! deadline; sequences and priorities are refused, not silently ignored).

mod support;

use std::time::{Duration, Instant};

use serde_json::{Value, json};
use support::{FAULT_INFER, Host, fault_action, guest};

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
fn classification_past_the_classes_zero_and_binary_output() {
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

#[test]
fn the_timeout_parameter_tightens_the_deadline_and_replaces_only_that_instance() {
    let host = Host::start(
        &guest("fault_model"),
        &["--instances", "1", "--timeout", "30s"],
    );
    // Sleeps 10 s; the client allows 200 ms (in µs, as Triton's `timeout`).
    let mut request = fault_action(4, 10_000);
    request["parameters"] = json!({ "timeout": 200_000 });
    let started = Instant::now();
    let response = host.post_json(FAULT_INFER, &request);
    let took = started.elapsed();
    assert_eq!(response.status, 504, "{}", response.error());
    assert!(
        response
            .error()
            .contains("deadline of 200ms (set by the client)"),
        "{}",
        response.error()
    );
    assert!(
        took < Duration::from_secs(3),
        "the deadline fired after {took:?}"
    );
    assert!(response.header("x-instance-id").is_some());
    // A looser timeout than the model's changes nothing.
    let mut request = fault_action(4, 10);
    request["parameters"] = json!({ "timeout": 60_000_000 });
    let response = host.post_json(FAULT_INFER, &request);
    assert_eq!(response.status, 200, "{}", response.error());
    // A request that waited past its deadline for an instance never runs.
    let addr = host.addr;
    let sleeper = std::thread::spawn(move || {
        support::Client::connect(addr)
            .unwrap()
            .post_json(FAULT_INFER, &fault_action(4, 1_000))
            .unwrap()
    });
    std::thread::sleep(Duration::from_millis(200));
    let mut request = fault_action(0, 5);
    request["parameters"] = json!({ "timeout": 100_000 });
    let response = host.post_json(FAULT_INFER, &request);
    assert_eq!(response.status, 504, "{}", response.error());
    assert!(
        response.error().contains("while it waited for an instance"),
        "{}",
        response.error()
    );
    assert_eq!(sleeper.join().unwrap().status, 200);
    let metrics = host.get("/metrics");
    let text = String::from_utf8_lossy(&metrics.body);
    let timeouts =
        "wasm_host_inference_requests_total{model=\"fault\",version=\"1\",outcome=\"timeout\"} 2";
    assert!(text.contains(timeouts), "{text}");
}
