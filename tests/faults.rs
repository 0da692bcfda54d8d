//! Faults stay inside one instance: whatever a model does, it fails its own
//! request and nothing else, and the host keeps its word about every request
//! it accepted.

mod support;

use std::collections::HashSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use support::{Client, FAULT_INFER, Host, fault_action, fault_result, guest};

#[test]
fn chaos_every_good_request_succeeds_and_every_poison_request_gets_its_own_status() {
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

    // Replacements happen off the request path: give the last ones a moment.
    let deadline = Instant::now() + Duration::from_secs(5);
    let health = loop {
        let health = host.get("/health").json();
        if health["instances"]["idle"] == 4 || Instant::now() > deadline {
            break health;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
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
        std::thread::sleep(Duration::from_millis(50));
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
    std::thread::sleep(Duration::from_millis(100));
    let health = host.get("/health").json();
    assert_eq!(health["instances"]["replaced"], 2);
    assert_eq!(health["instances"]["total"], 2);
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
    std::thread::sleep(Duration::from_millis(100));
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
    for _ in 0..5 {
        let mut client = Client::connect(host.addr).unwrap();
        let body = serde_json::to_vec(&fault_action(4, 2_000)).unwrap();
        client.send_only("POST", FAULT_INFER, &body);
        std::thread::sleep(Duration::from_millis(100));
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
fn the_sandbox_gives_a_guest_no_files_environment_or_arguments() {
    // SECRET is in the host's environment; the guest must not see it.
    let host = Host::start(&guest("fault_model"), &["--instances", "1"]);
    let response = host.post_json(FAULT_INFER, &fault_action(5, 0));
    assert_eq!(
        response.status,
        200,
        "{}",
        String::from_utf8_lossy(&response.body)
    );
    assert_eq!(
        fault_result(&response),
        0,
        "the guest saw files, environment or arguments"
    );
}

#[test]
fn guest_output_goes_to_the_host_log_tagged_and_bounded() {
    let host = Host::start(&guest("fault_model"), &["--instances", "1"]);
    let response = host.post_json(FAULT_INFER, &fault_action(7, 5_000));
    assert_eq!(
        response.status, 200,
        "a flood of output must not fail the request"
    );
    let id = response.instance();
    std::thread::sleep(Duration::from_millis(100));
    let log = host.log();
    let guest_lines: Vec<&String> = log
        .iter()
        .filter(|l| l.contains("guest") && l.contains(&format!("instance={id}")))
        .collect();
    // 5,000 lines of 100 bytes per stream, kept to 64 lines (of the 16 KiB
    // kept) each, and one line saying what was dropped.
    assert!(guest_lines.len() > 100, "{}", log.join("\n"));
    assert!(
        guest_lines.len() <= 2 * 65,
        "{} guest lines",
        guest_lines.len()
    );
    assert!(
        guest_lines
            .iter()
            .any(|l| l.contains("stream=\"stdout\"") || l.contains("stream=stdout"))
    );
    assert!(
        guest_lines.iter().any(|l| l.contains("dropped")),
        "the truncation is reported"
    );
    let distinct: HashSet<&str> = ["stdout", "stderr"]
        .into_iter()
        .filter(|s| guest_lines.iter().any(|l| l.contains(s)))
        .collect();
    assert_eq!(distinct.len(), 2);
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
    std::thread::sleep(Duration::from_millis(300));
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
