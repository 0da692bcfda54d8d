//! What a host promises its fleet: TERM answers every accepted request
//! within the graceful timeout, readiness that means "can serve" (not
//! "busy"), a drain an operator turns on and off for a rolling upgrade, an
//! autoscaling signal that is exact for fast models, and the status page.
//! The fleet itself (three hosts behind nginx, a rolling upgrade, a host
//! killed under load) is tests/python/test_fleet.py.

mod support;

use std::io::Write;
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::json;
use support::{Client, FAULT_INFER, Host, fault_action, guest, request};

const TOKEN: &str = "fleet-test-token";

fn admin(host: &Host, path: &str, token: Option<&str>) -> support::Response {
    let auth = token.map(|t| format!("Bearer {t}"));
    let headers: Vec<(&str, &str)> = auth
        .as_deref()
        .map(|a| vec![("Authorization", a)])
        .unwrap_or_default();
    request(host.addr, "POST", path, &headers, b"").unwrap()
}

/// Turns on a drain that refuses new inference requests; answers the
/// host's traffic.
fn refusing_drain(addr: std::net::SocketAddr) -> serde_json::Value {
    request(
        addr,
        "POST",
        "/v2/repository/drain",
        &[],
        br#"{"refuse": true}"#,
    )
    .unwrap()
    .json()
}

fn digits_request() -> serde_json::Value {
    json!({ "inputs": [{ "name": "x", "shape": [1, 64], "datatype": "FP32", "data": vec![0.5; 64] }] })
}

#[test]
fn a_drained_host_is_not_ready_but_serves_every_request_that_still_arrives() {
    let host = Host::start_with_env(
        &guest("guest_model"),
        &["--instances", "1", "--model-control", "explicit"],
        &[("WASM_HOST_ADMIN_TOKEN", TOKEN)],
    );
    assert_eq!(host.get("/v2/health/ready").status, 200);

    let refused = admin(&host, "/v2/repository/drain", None);
    assert_eq!(refused.status, 401, "the drain is an admin call");
    assert_eq!(host.get("/v2/health/ready").status, 200);

    let drained = admin(&host, "/v2/repository/drain", Some(TOKEN));
    assert_eq!(drained.status, 200);
    assert_eq!(drained.json()["draining"], true);
    let ready = host.get("/v2/health/ready");
    assert_eq!(ready.status, 503, "the balancer must stop sending");
    assert!(ready.header("retry-after").is_some());
    assert_eq!(host.get("/v2/health/live").status, 200, "alive all along");
    assert_eq!(host.get("/health").json()["status"], "draining");

    // A request the balancer sent before it noticed is served, not refused.
    let served = host.post_json("/v2/models/digits/infer", &digits_request());
    assert_eq!(served.status, 200, "{}", served.error());
    let again = admin(&host, "/v2/repository/drain", Some(TOKEN)).json();
    assert_eq!(again["draining"], true);
    assert_eq!(again["in_flight"], 0);
    assert_eq!(again["requests"], 1, "what a script watches: {again}");

    let undrained = admin(&host, "/v2/repository/undrain", Some(TOKEN));
    assert_eq!(undrained.json()["draining"], false);
    assert_eq!(host.get("/v2/health/ready").status, 200);
    assert_eq!(host.get("/health").json()["status"], "ok");
}

#[test]
fn a_refusing_drain_closes_new_inference_requests_unanswered_and_finishes_the_rest() {
    let host = Host::start(
        &guest("slow_model"),
        &["--instances", "2", "--model-control", "explicit"],
    );
    let addr = host.addr;
    let running = std::thread::spawn(move || {
        Client::connect(addr)
            .unwrap()
            .post_json("/predict", &json!({ "inputs": [600] }))
            .unwrap()
            .status
    });
    host.wait_for_health("the request running", Duration::from_secs(5), |h| {
        h["instances"]["busy"] == 1
    });
    let drained = refusing_drain(addr);
    assert_eq!(
        (&drained["refusing"], &drained["in_flight"]),
        (&json!(true), &json!(1)),
        "{drained}"
    );

    // A new inference request: its connection closes before any answer,
    // which a balancer retries on its next host.
    let refused = Client::connect(addr)
        .unwrap()
        .post_json("/predict", &json!({ "inputs": [1] }));
    assert!(refused.is_err(), "closed unanswered: {refused:?}");
    // Everything else is answered: health, metadata, metrics.
    assert_eq!(host.get("/v2/health/ready").status, 503);
    assert_eq!(host.get("/v2/models/slow").status, 200);
    // The request that was running when the drain began finishes.
    assert_eq!(running.join().unwrap(), 200);
    let traffic = admin(&host, "/v2/repository/undrain", None).json();
    assert_eq!(
        (
            &traffic["refused"],
            &traffic["requests"],
            &traffic["in_flight"]
        ),
        (&json!(1), &json!(1), &json!(0)),
        "{traffic}"
    );
    let served = host.post_json("/predict", &json!({ "inputs": [1] }));
    assert_eq!(served.status, 200, "undrained: serving again");
}

#[test]
fn a_request_still_sending_its_body_is_in_flight_so_a_drain_waits_for_it_and_it_is_answered() {
    let host = Host::start(
        &guest("guest_model"),
        &["--instances", "1", "--model-control", "explicit"],
    );
    let addr = host.addr;
    // The head and half the body: admitted, its body still on the wire.
    let body = serde_json::to_vec(&digits_request()).unwrap();
    let (first, rest) = body.split_at(body.len() / 2);
    let mut sending = Client::connect(addr).unwrap();
    let head = format!(
        "POST /v2/models/digits/infer HTTP/1.1\r\nHost: {addr}\r\n\
         Content-Type: application/json\r\nContent-Length: {}\r\n\r\n",
        body.len()
    );
    sending.write_raw(head.as_bytes()).unwrap();
    sending.write_raw(first).unwrap();
    host.wait_for_health(
        "the request reading its body",
        Duration::from_secs(5),
        |h| h["traffic"]["in_flight"] == 1 && h["bodies"]["held_bytes"] != 0,
    );

    let drained = admin(&host, "/v2/repository/drain", None);
    assert_eq!(drained.status, 200, "{}", drained.error());
    let drained = drained.json();
    assert_eq!(
        (&drained["refusing"], &drained["in_flight"]),
        (&json!(false), &json!(1)),
        "the drain counts the request that has not finished its body: {drained}"
    );
    let refusing = refusing_drain(addr);
    assert_eq!(refusing["in_flight"], 1, "{refusing}");
    let refused = Client::connect(addr)
        .unwrap()
        .post_json("/v2/models/digits/infer", &digits_request());
    assert!(
        refused.is_err(),
        "a new request is closed unanswered: {refused:?}"
    );

    // The rest of the body arrives: the admitted request is answered.
    sending.write_raw(rest).unwrap();
    let answered = sending.read_response().unwrap();
    assert_eq!(answered.status, 200, "{}", answered.error());
    let after = admin(&host, "/v2/repository/drain", None).json();
    assert_eq!(
        (&after["in_flight"], &after["refused"]),
        (&json!(0), &json!(1)),
        "{after}"
    );
}

#[test]
fn draining_needs_model_control_like_every_other_change() {
    let host = Host::start(&guest("guest_model"), &["--instances", "1"]);
    let refused = admin(&host, "/v2/repository/drain", None);
    assert_eq!(refused.status, 403);
    assert!(refused.error().contains("--model-control explicit"));
    assert_eq!(host.get("/v2/health/ready").status, 200);
}

#[test]
fn with_an_admin_plane_the_drain_lives_there_only() {
    let host = Host::start(
        &guest("guest_model"),
        &[
            "--instances",
            "1",
            "--model-control",
            "explicit",
            "--admin-bind",
            "127.0.0.1:0",
        ],
    );
    assert_eq!(admin(&host, "/v2/repository/drain", None).status, 404);
    let log = host.log().join("\n");
    let admin_addr: std::net::SocketAddr = log
        .split("repository API on http://")
        .nth(1)
        .and_then(|rest| rest.split_whitespace().next())
        .expect("the admin address in the log")
        .parse()
        .unwrap();
    let drained = request(admin_addr, "POST", "/v2/repository/drain", &[], b"").unwrap();
    assert_eq!(drained.status, 200);
    assert_eq!(host.get("/v2/health/ready").status, 503);
}

#[test]
fn busy_seconds_grow_by_the_time_instances_spend_serving_even_mid_request() {
    let host = Host::start(&guest("slow_model"), &["--instances", "2"]);
    let busy = "wasm_host_instance_busy_seconds_total{model=\"slow\",version=\"1\"}";
    let pending = "wasm_host_pending_requests_seconds_total{model=\"slow\",version=\"1\"}";
    assert_eq!(host.metric(busy), 0.0);
    let addr = host.addr;
    let started = Instant::now();
    let calls: Vec<_> = (0..2)
        .map(|_| {
            std::thread::spawn(move || {
                Client::connect(addr)
                    .unwrap()
                    .post_json("/predict", &json!({ "inputs": [800] }))
                    .unwrap()
                    .status
            })
        })
        .collect();
    // Half-way, two instances have been busy for ~0.4 s each: the counter
    // says so already, where a gauge would need the scrape to land on them.
    // (A fixed sleep on purpose: the time that passes is what is measured.)
    std::thread::sleep(Duration::from_millis(400));
    let midway = host.metric(busy);
    let elapsed = started.elapsed().as_secs_f64();
    assert!(
        midway > 0.4 && midway <= 2.0 * elapsed + 0.01,
        "{midway} busy seconds after {elapsed} s"
    );
    for call in calls {
        assert_eq!(call.join().unwrap(), 200);
    }
    // 2 × 0.8 s of sleeping guests, plus scheduling on a busy machine.
    let done = host.metric(busy);
    assert!((1.55..2.6).contains(&done), "{done} busy seconds");
    let later = host.metric(busy);
    assert!(later - done < 0.01, "idle instances add nothing: {later}");
    let waited = host.metric(pending);
    assert!(waited >= done, "pending covers busy: {waited} < {done}");

    let text = host.get("/metrics").body;
    let mut promtool = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("promtool is missing: install it with `apt-get install prometheus` (make tools)");
    promtool.stdin.take().unwrap().write_all(&text).unwrap();
    let checked = promtool.wait_with_output().unwrap();
    assert!(
        checked.status.success(),
        "promtool: {}{}",
        String::from_utf8_lossy(&checked.stdout),
        String::from_utf8_lossy(&checked.stderr)
    );
}

#[test]
fn the_status_page_is_served_and_its_snapshot_shows_models_and_traffic() {
    let host = Host::start(&guest("guest_model"), &["--instances", "2"]);
    let page = host.get("/");
    assert_eq!(page.status, 200);
    assert!(
        page.header("content-type")
            .unwrap()
            .starts_with("text/html")
    );
    let html = String::from_utf8(page.body).unwrap();
    assert!(html.contains("<title>wasm-host</title>") && html.contains("fetch(\"/status\""));

    for _ in 0..5 {
        assert_eq!(
            host.post_json("/v2/models/digits/infer", &digits_request())
                .status,
            200
        );
    }
    let status = host.get("/status").json();
    assert_eq!(status["server"]["ready"], true);
    assert_eq!(status["server"]["requests"], 5);
    let model = &status["models"][0];
    assert_eq!(
        (&model["name"], &model["version"], &model["state"]),
        (&json!("digits"), &json!("1"), &json!("READY"))
    );
    assert_eq!(model["instances"]["total"], 2);
    assert_eq!(model["requests"]["success"], 5);
    let counts = model["latency"]["counts"].as_array().unwrap();
    assert_eq!(counts.iter().map(|c| c.as_u64().unwrap()).sum::<u64>(), 5);
    let events = status["events"].as_array().unwrap();
    assert!(
        events[0]["what"].as_str().unwrap().contains("loaded"),
        "{events:?}"
    );
}

#[test]
fn a_terminated_host_answers_every_accepted_request_then_exits_zero() {
    let mut host = Host::start(
        &guest("fault_model"),
        &["--instances", "4", "--graceful-timeout", "20s"],
    );
    let addr = host.addr;
    let term_sent: Arc<Mutex<Option<Instant>>> = Arc::default();
    let clients: Vec<_> = (0..16)
        .map(|_| {
            let term_sent = Arc::clone(&term_sent);
            std::thread::spawn(move || {
                let mut answered = 0;
                let Ok(mut client) = Client::connect(addr) else {
                    return answered;
                };
                loop {
                    let sent = Instant::now();
                    match client.post_json(FAULT_INFER, &fault_action(4, 200)) {
                        Ok(response) => {
                            assert_eq!(response.status, 200, "{}", response.error());
                            answered += 1;
                        }
                        Err(err) => {
                            // Only a request sent as the host stopped accepting may go
                            // unanswered, and then with no byte of a response.
                            let term = term_sent.lock().unwrap().expect("an error before TERM");
                            assert!(
                                sent + Duration::from_millis(50) > term,
                                "a request sent {:?} before TERM was lost: {err}",
                                term - sent
                            );
                            assert_eq!(err.to_string(), "connection closed before a response");
                            return answered;
                        }
                    }
                    if term_sent.lock().unwrap().is_some() {
                        // A new connection must now be refused.
                        return answered;
                    }
                }
            })
        })
        .collect();
    // 16 clients on 4 instances: 4 requests in flight and 12 queued.
    host.wait_for_health(
        "4 requests in flight and 12 queued",
        Duration::from_secs(10),
        |h| h["instances"]["busy"] == 4 && h["queue"]["depth"] == 12,
    );
    *term_sent.lock().unwrap() = Some(Instant::now());
    host.signal("TERM");
    let answered: usize = clients.into_iter().map(|c| c.join().unwrap()).sum();
    assert!(answered >= 16, "only {answered} requests answered");
    let status = host
        .wait(Duration::from_secs(20))
        .expect("the host did not exit");
    assert_eq!(status.code(), Some(0));
    assert!(Client::connect(addr).is_err(), "still accepting after TERM");
    let log = host.log().join("\n");
    assert!(log.contains("all requests finished"), "{log}");
}

#[test]
fn the_graceful_timeout_bounds_how_long_a_terminated_host_waits() {
    let mut host = Host::start(
        &guest("fault_model"),
        &["--instances", "1", "--graceful-timeout", "500ms"],
    );
    let mut client = Client::connect(host.addr).unwrap();
    let body = serde_json::to_vec(&fault_action(4, 30_000)).unwrap();
    client.send_only("POST", FAULT_INFER, &body);
    host.wait_for_health("the request running", Duration::from_secs(5), |h| {
        h["instances"]["busy"] == 1
    });
    let started = Instant::now();
    host.signal("TERM");
    host.wait(Duration::from_secs(10))
        .expect("the host did not exit");
    let took = started.elapsed();
    assert!(took < Duration::from_secs(5), "exited after {took:?}");
    assert!(host.log().join("\n").contains("graceful timeout passed"));
}
