//! The instance life cycle under traffic, driven by signals as gunicorn users
//! drive it: TERM drains, HUP reloads, TTIN/TTOU resize, --max-requests
//! recycles.

mod support;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::json;
use support::{Client, FAULT_INFER, Host, fault_action, guest, scratch_file};

/// Polls `/health` until `check` holds, or fails after 10 s.
fn wait_for_health(host: &Host, what: &str, check: impl Fn(&serde_json::Value) -> bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let health = host.get("/health").json();
        if check(&health) {
            return;
        }
        assert!(Instant::now() < deadline, "{what}: {health}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn wait_for_log(host: &Host, needle: &str) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while !host.log().iter().any(|l| l.contains(needle)) {
        assert!(
            Instant::now() < deadline,
            "no {needle:?} in the log:\n{}",
            host.log().join("\n")
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

#[test]
fn term_under_load_answers_every_accepted_request_then_exits_zero() {
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
    std::thread::sleep(Duration::from_millis(1000));
    // 16 clients on 4 instances: 4 requests in flight and 12 queued right now.
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
fn graceful_timeout_bounds_how_long_term_waits() {
    let mut host = Host::start(
        &guest("fault_model"),
        &["--instances", "1", "--graceful-timeout", "500ms"],
    );
    let mut client = Client::connect(host.addr).unwrap();
    let body = serde_json::to_vec(&fault_action(4, 30_000)).unwrap();
    client.send_only("POST", FAULT_INFER, &body);
    std::thread::sleep(Duration::from_millis(200));
    let started = Instant::now();
    host.signal("TERM");
    host.wait(Duration::from_secs(10))
        .expect("the host did not exit");
    let took = started.elapsed();
    assert!(took < Duration::from_secs(5), "exited after {took:?}");
    assert!(host.log().join("\n").contains("graceful timeout passed"));
}

#[test]
fn hup_swaps_the_model_under_load_with_no_failed_request_and_a_bad_file_changes_nothing() {
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

    std::thread::sleep(Duration::from_millis(500));
    // Deploy the new model as operators do: write beside, rename over.
    let staged = scratch_file("staged.wasm");
    std::fs::copy(guest("echo_model"), &staged).unwrap();
    std::fs::rename(&staged, &path).unwrap();
    host.signal("HUP");
    wait_for_log(&host, "reloaded");
    let swapped = Instant::now();
    std::thread::sleep(Duration::from_millis(500));

    // A corrupt file: the reload fails and the echo model keeps serving.
    std::fs::write(&path, b"\0asm\x0d\0\x01\0garbage").unwrap();
    host.signal("HUP");
    wait_for_log(&host, "reload failed");
    std::thread::sleep(Duration::from_millis(300));
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
fn ttin_and_ttou_add_and_remove_one_instance() {
    let host = Host::start(&guest("fault_model"), &["--instances", "2"]);
    host.signal("TTIN");
    wait_for_health(&host, "after one TTIN", |h| h["instances"]["total"] == 3);
    host.signal("TTIN");
    wait_for_health(&host, "after two TTIN", |h| h["instances"]["total"] == 4);
    host.signal("TTOU");
    wait_for_health(&host, "after TTOU", |h| h["instances"]["total"] == 3);
    for _ in 0..4 {
        host.signal("TTOU");
        std::thread::sleep(Duration::from_millis(50));
    }
    wait_for_health(&host, "never below one", |h| {
        h["instances"]["total"] == 1 && h["instances"]["target"] == 1
    });
    assert_eq!(host.post_json(FAULT_INFER, &fault_action(0, 5)).status, 200);
    assert_eq!(host.get("/v2/health/ready").status, 200);
}

/// The instance ids of `n` sequential requests.
fn ids_of_sequential_requests(host: &Host, n: usize) -> Vec<u64> {
    let mut client = Client::connect(host.addr).unwrap();
    (0..n)
        .map(|i| {
            let response = client
                .post_json(FAULT_INFER, &fault_action(0, i as i64))
                .unwrap();
            assert_eq!(
                response.status, 200,
                "a recycled instance finishes its request"
            );
            response.instance()
        })
        .collect()
}

/// Lengths of the runs of equal ids, the last (unfinished) run left out.
fn run_lengths(ids: &[u64]) -> Vec<usize> {
    let mut runs: Vec<usize> = ids.chunk_by(|a, b| a == b).map(<[u64]>::len).collect();
    runs.pop();
    runs
}

#[test]
fn max_requests_recycles_an_instance_after_that_many_requests() {
    let host = Host::start(
        &guest("fault_model"),
        &["--instances", "1", "--max-requests", "3"],
    );
    let ids = ids_of_sequential_requests(&host, 12);
    // Replacement happens off the request path, so allow a request to land
    // on the new instance before the old one is gone... but never beyond 3.
    assert!(run_lengths(&ids).iter().all(|&n| n == 3), "{ids:?}");
}

#[test]
fn max_requests_jitter_spreads_recycling() {
    let host = Host::start(
        &guest("fault_model"),
        &[
            "--instances",
            "1",
            "--max-requests",
            "2",
            "--max-requests-jitter",
            "4",
        ],
    );
    let runs = run_lengths(&ids_of_sequential_requests(&host, 80));
    assert!(runs.len() >= 10, "{runs:?}");
    assert!(runs.iter().all(|&n| (2..=6).contains(&n)), "{runs:?}");
    let distinct: std::collections::HashSet<_> = runs.iter().collect();
    assert!(
        distinct.len() >= 3,
        "jitter should vary the run lengths: {runs:?}"
    );
}
