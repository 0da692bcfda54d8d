//! No client, model file or guest can hang, crash or flood the host: each
//! test here is one hole an attacker found, and the promise that closes it.

mod support;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use support::{Client, FAULT_INFER, Host, fault_action, fault_result, guest, request};

fn metric(host: &Host, line_start: &str) -> f64 {
    let text = String::from_utf8(host.get("/metrics").body).unwrap();
    text.lines()
        .find_map(|l| l.strip_prefix(line_start))
        .unwrap_or_else(|| panic!("no {line_start} in\n{text}"))
        .trim()
        .parse()
        .unwrap()
}

fn wait_for_log(host: &Host, needle: &str, within: Duration) {
    let deadline = Instant::now() + within;
    while !host.log().iter().any(|l| l.contains(needle)) {
        assert!(
            Instant::now() < deadline,
            "no {needle:?} in the log:\n{}",
            host.log().join("\n")
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn digits_row() -> Value {
    support::reference()["inputs"][0].clone()
}

fn digits_infer_body() -> Vec<u8> {
    serde_json::to_vec(&json!({
        "inputs": [{ "name": "x", "shape": [1, 64], "datatype": "FP32", "data": digits_row() }],
        "outputs": [{ "name": "label" }]
    }))
    .unwrap()
}

/// Opens a connection that sends a request's headers and `sent` bytes of a
/// `declared`-byte body, then nothing.
fn stalled_body(addr: std::net::SocketAddr, declared: usize, sent: usize) -> TcpStream {
    let mut stream = TcpStream::connect(addr).unwrap();
    let head = format!(
        "POST /v2/models/digits/infer HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n\
         Content-Length: {declared}\r\n\r\n"
    );
    stream.write_all(head.as_bytes()).unwrap();
    stream.write_all(&vec![b' '; sent]).unwrap();
    stream
}

/// What the server sent before closing, within `within`.
fn read_until_closed(stream: &mut TcpStream, within: Duration) -> String {
    stream.set_read_timeout(Some(within)).unwrap();
    let mut got = Vec::new();
    let _ = stream.read_to_end(&mut got);
    String::from_utf8_lossy(&got).into_owned()
}

#[test]
fn a_body_that_stops_arriving_is_cut_off_and_liveness_keeps_answering() {
    let host = Host::start(
        &guest("guest_model"),
        &["--max-connections", "8", "--body-timeout", "1s"],
    );
    // Every connection the host allows, each stuck one byte into its body.
    let mut stalled: Vec<TcpStream> = (0..8).map(|_| stalled_body(host.addr, 1000, 1)).collect();
    std::thread::sleep(Duration::from_millis(200));
    let asked = Instant::now();
    let live = request(host.addr, "GET", "/v2/health/live", &[], b"").unwrap();
    assert_eq!(live.status, 200);
    assert!(
        asked.elapsed() < Duration::from_secs(5),
        "liveness took {:?} behind stalled bodies",
        asked.elapsed()
    );
    for stream in &mut stalled {
        let answer = read_until_closed(stream, Duration::from_secs(5));
        assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
        assert!(answer.contains("--body-timeout"), "{answer}");
    }
    assert_eq!(metric(&host, "wasm_host_request_body_timeouts_total "), 8.0);
}

#[test]
fn request_bodies_in_flight_share_one_budget_and_the_rest_get_503() {
    let host = Host::start(
        &guest("guest_model"),
        &[
            "--max-body",
            "2MiB",
            "--body-budget",
            "4MiB",
            "--body-timeout",
            "30s",
        ],
    );
    // Two bodies of 2 MiB, half sent: the whole budget is spoken for.
    let mut holders: Vec<TcpStream> = (0..2)
        .map(|_| stalled_body(host.addr, 2 << 20, 1 << 20))
        .collect();
    std::thread::sleep(Duration::from_millis(300));
    let health = host.get("/health").json();
    assert_eq!(health["bodies"]["held_bytes"], 4 << 20, "{health}");
    let body = digits_infer_body();
    let refused = request(
        host.addr,
        "POST",
        "/v2/models/digits/infer",
        &[("Content-Type", "application/json")],
        &body,
    )
    .unwrap();
    assert_eq!(
        refused.status,
        503,
        "{}",
        String::from_utf8_lossy(&refused.body)
    );
    assert!(refused.header("retry-after").is_some());
    assert!(
        refused.error().contains("--body-budget"),
        "{}",
        refused.error()
    );
    // The holders leave; their share comes back.
    for holder in &mut holders {
        holder.shutdown(std::net::Shutdown::Both).unwrap();
    }
    let deadline = Instant::now() + Duration::from_secs(5);
    while host.get("/health").json()["bodies"]["held_bytes"] != 0 {
        assert!(Instant::now() < deadline, "the budget was not given back");
        std::thread::sleep(Duration::from_millis(20));
    }
    let served = request(
        host.addr,
        "POST",
        "/v2/models/digits/infer",
        &[("Content-Type", "application/json")],
        &body,
    )
    .unwrap();
    assert_eq!(served.status, 200);
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
        let body = compress(&digits_infer_body(), coding);
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
fn outputs_that_break_the_contract_get_a_500_naming_the_violation_and_keep_the_instance() {
    let host = Host::start(&guest("fault_model"), &["--instances", "1"]);
    let first = host.post_json(FAULT_INFER, &fault_action(0, 1)).instance();
    let cases = [
        (0, "more than 2^64 elements"),
        (2, "as FP64 but declares INT64"),
        (
            3,
            "returned 4 outputs but its metadata declares 3: result (INT64 [1])",
        ),
        (4, "returned output \"result\" as UINT8 but declares INT64"),
        (5, "which do not agree"),
        (6, "BYTES element is truncated"),
        (
            7,
            "did not return output \"text\", which its metadata declares",
        ),
    ];
    for (how, needle) in cases {
        let response = host.post_json(FAULT_INFER, &fault_action(10, how));
        assert_eq!(response.status, 500, "case {how}");
        assert!(
            response.error().contains(needle),
            "case {how}: {}",
            response.error()
        );
        assert_eq!(
            response.instance(),
            first,
            "case {how}: the instance is fine"
        );
    }
    // 10^8 empty rows are a valid tensor: flat, it is a short answer...
    let response = host.post_json(FAULT_INFER, &fault_action(10, 1));
    assert_eq!(response.status, 200);
    assert_eq!(
        response.json()["outputs"][1]["shape"],
        json!([100_000_000, 0])
    );
    // ...nested by /predict it would be 300 MB of `[],`: refused unbuilt.
    let asked = Instant::now();
    let response = host.post_json("/predict", &json!({ "inputs": [10, 1] }));
    assert_eq!(response.status, 500);
    assert!(
        response.error().contains("--max-response"),
        "{}",
        response.error()
    );
    assert!(
        asked.elapsed() < Duration::from_secs(2),
        "{:?}",
        asked.elapsed()
    );
    assert_eq!(host.get("/health").json()["instances"]["replaced"], 0);
    assert_eq!(
        fault_result(&host.post_json(FAULT_INFER, &fault_action(0, 9))),
        9
    );
}

#[test]
fn a_response_is_held_to_max_response_and_the_host_stays_small() {
    let host = Host::start(
        &guest("fault_model"),
        &["--instances", "2", "--max-response", "16MiB"],
    );
    let addr = host.addr;
    // Two 48 MiB outputs at once, as JSON (hundreds of MB) and as binary.
    let big: Vec<_> = [false, true]
        .into_iter()
        .map(|binary| {
            std::thread::spawn(move || {
                let mut body = fault_action(11, 48);
                body["parameters"] = json!({ "binary_data_output": binary });
                Client::connect(addr)
                    .unwrap()
                    .post_json(FAULT_INFER, &body)
                    .unwrap()
            })
        })
        .collect();
    for response in big {
        let response = response.join().unwrap();
        assert_eq!(response.status, 500);
        assert!(
            response.error().contains("--max-response"),
            "{}",
            response.error()
        );
    }
    // Two instances that held 48 MiB each, and the host: not gigabytes.
    let rss = host.rss();
    assert!(rss < 400 << 20, "host RSS {} MiB", rss >> 20);
    // Under the limit, a binary output comes back whole.
    let mut body = fault_action(11, 8);
    body["outputs"] = json!([{ "name": "blob", "parameters": { "binary_data": true } }]);
    let response = host.post_json(FAULT_INFER, &body);
    assert_eq!(response.status, 200);
    let json_len: usize = response
        .header("inference-header-content-length")
        .unwrap()
        .parse()
        .unwrap();
    assert_eq!(response.body.len() - json_len, 8 << 20);
    assert!(response.body[json_len..].iter().all(|&b| b == 1));
}

fn guest_log_lines(host: &Host, instance: u64) -> Vec<String> {
    host.log()
        .into_iter()
        .filter(|l| l.contains("guest") && l.contains(&format!("instance={instance}")))
        .collect()
}

#[test]
fn guest_output_is_bounded_in_lines_and_its_control_characters_are_escaped() {
    let host = Host::start(&guest("fault_model"), &["--instances", "1"]);
    // 16 KiB of newlines per stream: at most 64 lines and one note each.
    let response = host.post_json(FAULT_INFER, &fault_action(12, 16 << 10));
    assert_eq!(response.status, 200);
    let id = response.instance();
    let response = host.post_json(FAULT_INFER, &fault_action(13, 0));
    assert_eq!(response.status, 200);
    std::thread::sleep(Duration::from_millis(200));
    let lines = guest_log_lines(&host, id);
    assert!(lines.len() <= 2 * 65 + 1, "{} guest lines", lines.len());
    let forged = lines
        .iter()
        .find(|l| l.contains("forged line"))
        .unwrap_or_else(|| panic!("{lines:#?}"));
    assert!(forged.contains("\\u{1b}[31mred"), "{forged}");
    assert!(
        forged.contains("\\u{d}forged line \\u{202e}txt.exe"),
        "{forged}"
    );
    assert!(
        !forged.contains('\x1b') && !forged.contains('\r') && !forged.contains('\u{202e}'),
        "{forged:?}"
    );
}

#[test]
fn a_model_whose_metadata_never_returns_fails_start_up_within_the_set_up_deadline() {
    let started = Instant::now();
    let (status, _, stderr) = support::run_command(&[
        std::ffi::OsStr::new("--bind"),
        std::ffi::OsStr::new("127.0.0.1:0"),
        guest("stuck_model").as_os_str(),
    ]);
    assert_eq!(status.code(), Some(3), "{stderr}");
    assert!(stderr.contains("set-up deadline"), "{stderr}");
    assert!(
        started.elapsed() < Duration::from_secs(30),
        "{:?}",
        started.elapsed()
    );
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
    wait_for_log(&host, "reloading the model", Duration::from_secs(5));
    // While the reload waits on the stuck model: requests are served, and a
    // TTIN is queued, not lost.
    assert_eq!(host.post_json("/v2/models/echo/infer", &echo).status, 200);
    host.signal("TTIN");
    wait_for_log(&host, "received TTIN while", Duration::from_secs(5));
    wait_for_log(&host, "set-up deadline", Duration::from_secs(30));
    assert!(
        host.log().iter().any(|l| l.contains("reload failed")),
        "{}",
        host.log().join("\n")
    );
    let deadline = Instant::now() + Duration::from_secs(5);
    while host.get("/health").json()["instances"]["target"] != 3 {
        assert!(Instant::now() < deadline, "the TTIN was not applied");
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(host.post_json("/v2/models/echo/infer", &echo).status, 200);
}

#[test]
fn a_trap_after_a_survived_refused_grow_is_a_500_not_a_507() {
    let host = Host::start(
        &guest("fault_model"),
        &["--instances", "1", "--memory-limit", "32MiB"],
    );
    let survived = host.post_json(FAULT_INFER, &fault_action(9, 64));
    assert_eq!(survived.status, 200);
    assert_eq!(
        fault_result(&survived),
        1,
        "the grow was refused and survived"
    );
    let trapped = host.post_json(FAULT_INFER, &fault_action(1, 0));
    assert_eq!(trapped.instance(), survived.instance());
    assert_eq!(trapped.status, 500, "{}", trapped.error());
}

#[test]
fn every_metric_label_exists_from_the_start_and_a_client_that_leaves_is_counted() {
    let host = Host::start(&guest("fault_model"), &["--instances", "1"]);
    for cause in ["trap", "timeout", "memory_cap", "cancelled", "recycled"] {
        let series = format!(
            "wasm_host_instance_replacements_total{{model=\"fault\",version=\"1\",cause=\"{cause}\"}} "
        );
        assert_eq!(metric(&host, &series), 0.0, "{cause}");
    }
    let cancelled =
        "wasm_host_inference_requests_total{model=\"fault\",version=\"1\",outcome=\"cancelled\"} ";
    assert_eq!(metric(&host, cancelled), 0.0);
    let mut client = Client::connect(host.addr).unwrap();
    client.send_only(
        "POST",
        FAULT_INFER,
        &serde_json::to_vec(&fault_action(4, 2_000)).unwrap(),
    );
    std::thread::sleep(Duration::from_millis(300));
    drop(client);
    let deadline = Instant::now() + Duration::from_secs(5);
    while metric(&host, cancelled) != 1.0 {
        assert!(
            Instant::now() < deadline,
            "the cancelled request was not counted"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(
        metric(
            &host,
            "wasm_host_instances_missing{model=\"fault\",version=\"1\"} "
        ),
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
    let body = digits_infer_body();
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
