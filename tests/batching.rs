//! Dynamic batching against the real host: concurrent requests joined into
//! one call give the answers they get alone; a batch that fails is re-run
//! request by request, so only the request that caused it fails; only
//! requests that agree on everything but dimension 0 are joined; a client
//! that leaves is left out; and the statistics show it.
//!
//! The batch model (examples/batch-model) answers each row with the rows of
//! the call that computed it (`batch`), so a test sees how it was batched.

mod support;

use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use support::{Client, Host, guest, reference, run_command};

const BATCH_INFER: &str = "/v2/models/batch/infer";

/// A request for the batch model: `rows` rows of `columns` values, the
/// first value of each row `first` (a marker, or any number).
fn rows(id: &str, first: f32, rows: usize, columns: usize) -> Value {
    let data: Vec<f32> = (0..rows * columns)
        .map(|i| if i % columns == 0 { first } else { i as f32 })
        .collect();
    json!({
        "id": id,
        "inputs": [{ "name": "x", "shape": [rows, columns], "datatype": "FP32", "data": data }],
    })
}

/// Sends every request at once, each from its own connection, and returns
/// the responses in the same order.
fn all_at_once(host: &Host, path: &str, requests: Vec<Value>) -> Vec<support::Response> {
    let start = Arc::new(Barrier::new(requests.len()));
    let threads: Vec<_> = requests
        .into_iter()
        .map(|request| {
            let start = Arc::clone(&start);
            let (addr, path) = (host.addr, path.to_owned());
            std::thread::spawn(move || {
                let mut client = Client::connect(addr).unwrap();
                start.wait();
                client.post_json(&path, &request).unwrap()
            })
        })
        .collect();
    threads.into_iter().map(|t| t.join().unwrap()).collect()
}

/// An output of a response, by name.
fn output<'a>(response: &'a Value, name: &str) -> &'a Value {
    response["outputs"]
        .as_array()
        .unwrap()
        .iter()
        .find(|o| o["name"] == name)
        .unwrap_or_else(|| panic!("no output {name} in {response}"))
}

/// The rows of the call that computed a batch-model response.
fn batched_in(response: &support::Response) -> i64 {
    output(&response.json(), "batch")["data"][0]
        .as_i64()
        .unwrap()
}

fn model_stats(host: &Host, model: &str) -> Value {
    host.get(&format!("/v2/models/{model}/stats")).json()["model_stats"][0].clone()
}

/// A host with one instance, so that concurrent requests must share it,
/// batching up to `max` rows with a queue delay of `delay`.
fn one_instance(model: &str, max: &str, delay: &str, more: &[&str]) -> Host {
    let mut args = vec![
        "--instances",
        "1",
        "--max-batch-size",
        max,
        "--max-queue-delay",
        delay,
    ];
    args.extend_from_slice(more);
    Host::start(&guest(model), &args)
}

#[test]
fn batched_answers_are_the_answers_each_request_gets_alone() {
    // One instance and a queue delay, so that concurrent requests batch.
    let batched = one_instance("guest_model", "16", "5ms", &[]);
    let alone = Host::start(&guest("guest_model"), &["--instances", "1"]);
    let reference = reference();
    // 24 clients, 5 requests each: 1, 2 or 3 rows from the reference set.
    let clients: Vec<_> = (0..24)
        .map(|client| {
            let reference = reference.clone();
            let addrs = (batched.addr, alone.addr);
            std::thread::spawn(move || {
                let mut on_batched = Client::connect(addrs.0).unwrap();
                let mut on_alone = Client::connect(addrs.1).unwrap();
                for round in 0..5 {
                    let n = 1 + (client + round) % 3;
                    let first = (client * 7 + round * 3) % 190;
                    let data: Vec<Value> = (first..first + n)
                        .flat_map(|r| reference["inputs"][r].as_array().unwrap().clone())
                        .collect();
                    let request = json!({
                        "id": format!("c{client}-r{round}"),
                        "inputs": [{ "name": "x", "shape": [n, 64], "datatype": "FP32", "data": data }],
                    });
                    let got = on_batched.post_json("/v2/models/digits/infer", &request);
                    let got = got.unwrap();
                    let want = on_alone
                        .post_json("/v2/models/digits/infer", &request)
                        .unwrap();
                    assert_eq!(got.status, 200, "{}", got.error());
                    // Bit for bit: the same JSON, its own id included.
                    assert_eq!(got.json(), want.json());
                    let labels = output(&got.json(), "label")["data"].clone();
                    let expected: Vec<Value> = (first..first + n)
                        .map(|r| reference["predicted_labels"][r].clone())
                        .collect();
                    assert_eq!(labels, json!(expected));
                }
            })
        })
        .collect();
    for client in clients {
        client.join().unwrap();
    }
    // Requests were joined: fewer calls than requests, in the statistics
    // and in the batch-size histogram.
    let stats = model_stats(&batched, "digits");
    let (inferences, executions) = (
        stats["inference_count"].as_u64().unwrap(),
        stats["execution_count"].as_u64().unwrap(),
    );
    assert_eq!(inferences, 120);
    assert!(executions < inferences, "{stats}");
    let batch_stats = stats["batch_stats"].as_array().unwrap();
    assert!(
        batch_stats
            .iter()
            .any(|b| b["batch_size"].as_u64().unwrap() > 3),
        "{stats}"
    );
    let calls: u64 = batch_stats
        .iter()
        .map(|b| b["compute_infer"]["count"].as_u64().unwrap())
        .sum();
    assert_eq!(calls, executions, "{stats}");
    let metrics = String::from_utf8(batched.get("/metrics").body).unwrap();
    let histogram_count = metrics
        .lines()
        .find(|l| l.starts_with("wasm_host_batch_size_count{"))
        .unwrap_or_else(|| panic!("no batch size histogram:\n{metrics}"));
    assert!(
        histogram_count.ends_with(&format!(" {executions}")),
        "{histogram_count}"
    );
    // The unbatched host made one call per request.
    let stats = model_stats(&alone, "digits");
    assert_eq!(stats["execution_count"], stats["inference_count"]);
}

#[test]
fn one_poison_request_fails_alone_and_its_seven_batch_mates_succeed() {
    // One instance and a long delay: the eight requests sent together form
    // one batch of eight, which goes as soon as it is complete.
    let more = ["--timeout", "500ms", "--memory-limit", "64MiB"];
    let host = one_instance("batch_model", "8", "1s", &more);
    // A healthy batch first: all eight computed in one call.
    let requests = (0..8)
        .map(|i| rows(&format!("ok{i}"), i as f32, 1, 3))
        .collect();
    for (i, response) in all_at_once(&host, BATCH_INFER, requests).iter().enumerate() {
        assert_eq!(response.status, 200, "{}", response.error());
        assert_eq!(batched_in(response), 8);
        let body = response.json();
        assert_eq!(body["id"], format!("ok{i}"));
        assert_eq!(
            output(&body, "y")["data"],
            json!([2.0 * i as f64, 2.0, 4.0])
        );
        assert_eq!(output(&body, "label")["data"], json!([format!("row {i}")]));
    }
    // Then one poison request among seven good ones, once for each way a
    // call can fail.
    for (marker, status, says) in [
        (-1001.0, 500, "trapped"),
        (-1002.0, 504, "deadline"),
        (-1003.0, 507, "memory"),
        (-1004.0, 400, "a row is invalid"),
    ] {
        let requests = (0..8)
            .map(|i| {
                let first = if i == 5 { marker } else { i as f32 };
                rows(&format!("r{i}"), first, 1, 3)
            })
            .collect();
        let responses = all_at_once(&host, BATCH_INFER, requests);
        for (i, response) in responses.iter().enumerate() {
            if i == 5 {
                assert_eq!(response.status, status, "marker {marker}: {response:?}");
                assert!(response.error().contains(says), "{}", response.error());
                continue;
            }
            assert_eq!(
                response.status,
                200,
                "marker {marker}: {}",
                response.error()
            );
            let body = response.json();
            assert_eq!(body["id"], format!("r{i}"));
            assert_eq!(
                output(&body, "y")["data"],
                json!([2.0 * i as f64, 2.0, 4.0])
            );
            // Re-run alone after the batch failed.
            assert_eq!(batched_in(response), 1, "marker {marker}");
        }
    }
    // A batch whose outputs cannot be split (one row of `y` short) fails
    // too, and every request in it succeeds alone.
    let requests = (0..8)
        .map(|i| rows(&format!("s{i}"), if i == 2 { -1005.0 } else { 1.0 }, 1, 3))
        .collect();
    for response in all_at_once(&host, BATCH_INFER, requests) {
        assert_eq!(response.status, 200, "{}", response.error());
        assert_eq!(batched_in(&response), 1);
    }
    let log = host.log().join("\n");
    for why in [
        "trap",
        "ran past its deadline",
        "memory cap",
        "invalid input",
        "cannot be split",
    ] {
        assert!(
            log.lines()
                .any(|l| l.contains("a batch of 8 requests (8 rows) failed") && l.contains(why)),
            "no failed batch for {why}:\n{log}"
        );
    }
}

#[test]
fn requests_are_joined_when_they_agree_on_what_the_model_computes_on() {
    let host = one_instance("batch_model", "16", "300ms", &[]);
    // Three groups: rows of 3 values, whatever outputs they ask for (a and
    // c: the outputs a request wants are picked from its own rows after the
    // call); rows of 4 values (b: another inner shape); rows of 3 with a
    // parameter the model receives (d: another computation).
    let mut requests = Vec::new();
    for i in 0..3 {
        requests.push(rows(&format!("a{i}"), 1.0, 1, 3));
        requests.push(rows(&format!("b{i}"), 1.0, 1, 4));
        let mut c = rows(&format!("c{i}"), 1.0, 1, 3);
        c["outputs"] = json!([{ "name": "batch" }, { "name": "y" }]);
        requests.push(c);
        let mut d = rows(&format!("d{i}"), 1.0, 1, 3);
        d["parameters"] = json!({ "work_us": 10 });
        requests.push(d);
    }
    let responses = all_at_once(&host, BATCH_INFER, requests);
    for response in &responses {
        assert_eq!(response.status, 200, "{}", response.error());
        let body = response.json();
        let id = body["id"].as_str().unwrap().to_owned();
        let expected = if id.starts_with('a') || id.starts_with('c') {
            6
        } else {
            3
        };
        assert_eq!(batched_in(response), expected, "{id}");
        // Each request gets the outputs it asked for, and only those.
        let mut names: Vec<&str> = body["outputs"]
            .as_array()
            .unwrap()
            .iter()
            .map(|o| o["name"].as_str().unwrap())
            .collect();
        names.sort_unstable();
        if id.starts_with('c') {
            assert_eq!(names, ["batch", "y"], "{id}");
        } else {
            assert!(names.len() >= 2, "{id}: {names:?}");
        }
    }
}

#[test]
fn a_request_whose_client_leaves_while_it_waits_is_left_out_of_its_batch() {
    let host = one_instance("batch_model", "8", "1s", &[]);
    let addr = host.addr;
    // The first request leads a batch that waits a second for more.
    let first = std::thread::spawn(move || {
        let mut client = Client::connect(addr).unwrap();
        client
            .post_json(BATCH_INFER, &rows("first", 1.0, 1, 3))
            .unwrap()
    });
    let pending = "wasm_host_pending_requests{model=\"batch\",version=\"1\"}";
    host.wait_for_metric(pending, 1.0, Duration::from_secs(5));
    // This one joins, then its client leaves.
    let mut leaver = Client::connect(addr).unwrap();
    let body = serde_json::to_vec(&rows("leaver", 2.0, 2, 3)).unwrap();
    leaver.send_only("POST", BATCH_INFER, &body);
    host.wait_for_metric(pending, 2.0, Duration::from_secs(5));
    drop(leaver);
    host.wait_for_metric(pending, 1.0, Duration::from_secs(5));
    let mut client = Client::connect(addr).unwrap();
    let last = client
        .post_json(BATCH_INFER, &rows("last", 3.0, 1, 3))
        .unwrap();
    let first = first.join().unwrap();
    // The two that stayed share one call of 2 rows: not 4.
    assert_eq!((first.status, last.status), (200, 200));
    assert_eq!((batched_in(&first), batched_in(&last)), (2, 2));
    let stats = model_stats(&host, "batch");
    assert_eq!(stats["execution_count"], 1, "{stats}");
}

#[test]
fn at_one_connection_latency_grows_by_no_more_than_the_queue_delay() {
    let delay = Duration::from_millis(2);
    let median_latency = |args: &[&str]| {
        let host = Host::start(&guest("guest_model"), args);
        let mut client = Client::connect(host.addr).unwrap();
        let request = json!({
            "inputs": [{ "name": "x", "shape": [1, 64], "datatype": "FP32",
                         "data": reference()["inputs"][0] }],
        });
        let mut took: Vec<Duration> = (0..25)
            .map(|_| {
                let started = Instant::now();
                let response = client
                    .post_json("/v2/models/digits/infer", &request)
                    .unwrap();
                assert_eq!(response.status, 200);
                started.elapsed()
            })
            .collect();
        took.sort();
        took[took.len() / 2]
    };
    let alone = median_latency(&["--instances", "2"]);
    let batched = median_latency(&[
        "--instances",
        "2",
        "--max-batch-size",
        "8",
        "--max-queue-delay",
        "2ms",
    ]);
    // A lone request waits out the delay for batch-mates, and not more:
    // not rounded up to tokio's millisecond ticks (medians, and 0.5 ms
    // of slack for a shared machine's scheduling).
    assert!(batched >= delay, "batched {batched:?}");
    assert!(
        batched <= alone + delay + Duration::from_micros(500),
        "batched {batched:?}, alone {alone:?}"
    );
}

#[test]
fn the_triton_config_of_a_batching_model_says_so() {
    let host = Host::start(
        &guest("guest_model"),
        &[
            "--max-batch-size",
            "32",
            "--max-queue-delay",
            "250us",
            "--preferred-batch-sizes",
            "8,16",
        ],
    );
    let config = host.get("/v2/models/digits/config").json();
    assert_eq!(config["max_batch_size"], 32);
    // As Triton writes a batching model's dims: without the batch dimension.
    assert_eq!(config["input"][0]["dims"], json!([64]));
    assert_eq!(
        config["dynamic_batching"],
        json!({ "preferred_batch_size": [8, 16], "max_queue_delay_microseconds": 250 })
    );
    // The metadata keeps the full shapes.
    let metadata = host.get("/v2/models/digits").json();
    assert_eq!(metadata["inputs"][0]["shape"], json!([-1, 64]));
    assert!(
        host.log()
            .iter()
            .any(|l| l.contains("batches of up to 32 rows (queue delay 250µs, preferred 8, 16)")),
        "{}",
        host.log().join("\n")
    );
}

#[test]
fn asking_a_model_without_a_batch_dimension_to_batch_is_a_start_up_error() {
    let (status, _, stderr) = run_command(&[
        "--bind",
        "127.0.0.1:0",
        "--max-batch-size",
        "8",
        guest("fault_model").to_str().unwrap(),
    ]);
    assert_eq!(status.code(), Some(3), "{stderr}");
    assert!(
        stderr.contains("leading -1")
            && stderr.contains("input \"action\" has shape [2]")
            && stderr.contains("leave max-batch-size out"),
        "{stderr}"
    );
    let (status, _, stderr) = run_command(&[
        "--bind",
        "127.0.0.1:0",
        "--max-queue-delay",
        "2ms",
        guest("guest_model").to_str().unwrap(),
    ]);
    assert_eq!(status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("need max-batch-size"), "{stderr}");
}
