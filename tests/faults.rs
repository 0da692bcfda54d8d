//! Faults stay inside one instance: whatever a model does (trap, spin,
//! sleep past its deadline, hog memory, break the output contract, never
//! finish its set-up), it fails its own request and nothing else, the
//! instance is replaced, and the host keeps its word about every request it
//! accepted. Recycling (`--max-requests`) replaces instances with no failure.

mod support;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use serde_json::json;
use support::{Client, FAULT_INFER, Host, fault_action, fault_result, guest};

#[test]
fn under_chaos_every_good_request_succeeds_and_every_poison_request_gets_its_own_status() {
    const CLIENTS: usize = 32;
    const PER_CLIENT: usize = 160; // 5,120 requests
    let host = Host::start(
        &guest("fault_model"),
        &[
            "--instances",
            "4",
            "--timeout",
            "100ms",
            "--memory-limit",
            "32MiB",
            "--queue-timeout",
            "60s",
        ],
    );
    let addr = host.addr;
    let counts = Arc::new([(); 4].map(|_| AtomicUsize::new(0)));
    let workers: Vec<_> = (0..CLIENTS)
        .map(|client| {
            let counts = Arc::clone(&counts);
            std::thread::spawn(move || {
                let mut connection = Client::connect(addr).unwrap();
                for i in 0..PER_CLIENT {
                    let n = (client * PER_CLIENT + i) as i64;
                    // One request in ten is poison: trap, loop, or hog memory.
                    let (action, want_status) = match n % 30 {
                        7 => (fault_action(1, 0), 500),
                        17 => (fault_action(2, 0), 504),
                        27 => (fault_action(3, 64), 507),
                        _ => (fault_action(0, n), 200),
                    };
                    let response = connection.post_json(FAULT_INFER, &action).unwrap();
                    assert_eq!(
                        response.status,
                        want_status,
                        "request {n}: {}",
                        String::from_utf8_lossy(&response.body)
                    );
                    response.instance();
                    let kind = match want_status {
                        200 => {
                            assert_eq!(
                                fault_result(&response),
                                n,
                                "request {n} got another's answer"
                            );
                            0
                        }
                        500 => 1,
                        504 => 2,
                        _ => 3,
                    };
                    counts[kind].fetch_add(1, Ordering::Relaxed);
                }
            })
        })
        .collect();
    for worker in workers {
        worker.join().expect("a client saw a wrong answer");
    }
    let counts: Vec<usize> = counts.iter().map(|c| c.load(Ordering::Relaxed)).collect();
    assert_eq!(counts.iter().sum::<usize>(), CLIENTS * PER_CLIENT);
    assert!(
        counts[1] > 150 && counts[2] > 150 && counts[3] > 150,
        "{counts:?}"
    );

    // Replacements happen off the request path: wait for the last ones.
    host.wait_for_health("every instance idle again", Duration::from_secs(5), |h| {
        h["instances"]["idle"] == 4
    });
    let health = host.health();
    assert_eq!(health["instances"]["total"], 4, "{health}");
    assert_eq!(health["instances"]["idle"], 4, "{health}");
    let poisoned = (counts[1] + counts[2] + counts[3]) as u64;
    assert_eq!(health["instances"]["replaced"].as_u64().unwrap(), poisoned);
    assert_eq!(host.get("/v2/health/ready").status, 200);
    // 4 instances capped at 32 MiB each, plus the host itself.
    let rss = host.rss();
    assert!(
        rss < 300 << 20,
        "host RSS after the chaos is {} MiB",
        rss >> 20
    );
}

#[test]
fn a_request_past_its_deadline_gets_504_and_only_its_instance_is_replaced() {
    let host = Host::start(
        &guest("fault_model"),
        &["--instances", "2", "--timeout", "300ms"],
    );
    let addr = host.addr;
    // A spinning guest (stopped by the epoch deadline) and a sleeping one
    // (stopped by the timer while it waits in a host call).
    for action in [fault_action(2, 0), fault_action(4, 10_000)] {
        let spinner = std::thread::spawn(move || {
            let started = Instant::now();
            let response = Client::connect(addr)
                .unwrap()
                .post_json(FAULT_INFER, &action)
                .unwrap();
            (response, started.elapsed())
        });
        // Meanwhile the other instance keeps answering.
        host.wait_for_health("the poison request running", Duration::from_secs(5), |h| {
            h["instances"]["busy"] == 1
        });
        for n in 0..20 {
            let response = host.post_json(FAULT_INFER, &fault_action(0, n));
            assert_eq!(response.status, 200);
            assert_eq!(fault_result(&response), n);
        }
        let (response, took) = spinner.join().unwrap();
        assert_eq!(response.status, 504, "{}", response.error());
        assert!(
            response.error().contains("deadline of 300ms"),
            "{}",
            response.error()
        );
        assert!(
            took < Duration::from_secs(3),
            "the deadline fired after {took:?}"
        );
    }
    host.wait_for_health(
        "both stopped instances replaced",
        Duration::from_secs(5),
        |h| h["instances"]["replaced"] == 2 && h["instances"]["total"] == 2,
    );
}

#[test]
fn a_trap_is_logged_with_the_old_and_new_instance_ids_and_its_cause() {
    let host = Host::start(&guest("fault_model"), &["--instances", "1"]);
    let before = host.post_json(FAULT_INFER, &fault_action(0, 0)).instance();
    for kind in [1, 6] {
        let response = host.post_json(FAULT_INFER, &fault_action(kind, 0));
        assert_eq!(response.status, 500, "kind {kind}");
        assert!(response.error().contains("trapped"), "{}", response.error());
    }
    let after = host.post_json(FAULT_INFER, &fault_action(0, 0)).instance();
    assert_ne!(before, after);
    host.wait_for_log(
        &format!("replaced instance {before} with "),
        Duration::from_secs(5),
    );
    let log = host.log().join("\n");
    assert!(
        log.contains(&format!("replaced instance {before} with ")),
        "{log}"
    );
    assert!(log.contains("asked to panic"), "the cause is logged: {log}");
}

#[test]
fn a_model_reported_error_is_a_500_that_keeps_the_instance() {
    let host = Host::start(&guest("fault_model"), &["--instances", "1"]);
    let failed = host.post_json(FAULT_INFER, &fault_action(8, 0));
    assert_eq!(failed.status, 500);
    assert!(
        failed.error().contains("asked to fail"),
        "{}",
        failed.error()
    );
    let rejected = host.post_json(FAULT_INFER, &fault_action(99, 0));
    assert_eq!(rejected.status, 400);
    let next = host.post_json(FAULT_INFER, &fault_action(0, 1));
    assert_eq!(
        next.instance(),
        failed.instance(),
        "no replacement for an error the model handled"
    );
    assert_eq!(host.get("/health").json()["instances"]["replaced"], 0);
}

#[test]
fn clients_that_disconnect_mid_request_cost_no_instance() {
    let host = Host::start(&guest("fault_model"), &["--instances", "1"]);
    for n in 1..=5 {
        let mut client = Client::connect(host.addr).unwrap();
        let body = serde_json::to_vec(&fault_action(4, 2_000)).unwrap();
        client.send_only("POST", FAULT_INFER, &body);
        // The client leaves once the guest is in its call.
        host.wait_for_health("the guest called", Duration::from_secs(10), |h| {
            h["calls"] == n
        });
        drop(client);
    }
    // The only instance is free again: not lost to any of the five.
    let started = Instant::now();
    let response = host.post_json(FAULT_INFER, &fault_action(0, 3));
    assert_eq!(response.status, 200);
    assert!(started.elapsed() < Duration::from_secs(5));
    assert_eq!(host.get("/health").json()["instances"]["total"], 1);
}

#[test]
fn spinning_guests_do_not_stall_the_host() {
    // As many spinning guests as the runtime has threads: each must yield on
    // the epoch ticks, or nothing else could run.
    let host = Host::start(
        &guest("fault_model"),
        &["--instances", "3", "--timeout", "2s"],
    );
    let addr = host.addr;
    let spinners: Vec<_> = (0..2)
        .map(|_| {
            std::thread::spawn(move || {
                Client::connect(addr)
                    .unwrap()
                    .post_json(FAULT_INFER, &fault_action(2, 0))
                    .unwrap()
            })
        })
        .collect();
    host.wait_for_health("both guests spinning", Duration::from_secs(5), |h| {
        h["instances"]["busy"] == 2
    });
    for n in 0..5 {
        let asked = Instant::now();
        assert_eq!(host.get("/health").json()["instances"]["busy"], 2);
        let answer = host.post_json(FAULT_INFER, &fault_action(0, n));
        assert_eq!(fault_result(&answer), n);
        let took = asked.elapsed();
        assert!(
            took < Duration::from_millis(200),
            "the host took {took:?} while guests spin"
        );
    }
    for spinner in spinners {
        assert_eq!(spinner.join().unwrap().status, 504);
    }
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
fn a_trapping_guest_fails_its_request_alone_and_is_replaced_under_a_new_id() {
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
fn an_instance_is_recycled_after_max_requests_and_finishes_its_last_request() {
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
fn the_max_requests_jitter_spreads_recycling_over_a_range() {
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
    host.wait_for_health(
        "the sleeper on the only instance",
        Duration::from_secs(5),
        |h| h["instances"]["busy"] == 1,
    );
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
