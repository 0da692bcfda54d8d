//! Elastic pools against the real host: `--min-instances` / `--max-instances`
//! grow a pool for queued requests and `--idle-timeout` retires what is left
//! idle, down to zero when asked; TTIN and TTOU resize a pool by hand.

mod support;

use std::collections::HashSet;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::{Value, json};
use support::{Client, FAULT_INFER, Host, fault_action, guest, reference};

/// The one model's pool, from `/health`.
fn pool(host: &Host) -> Value {
    let health = host.get("/health").json();
    let model = health["model"].as_str().unwrap().to_owned();
    health["models"][model]["instances"].clone()
}

/// Polls the pool until `check` holds, or fails after 10 s.
fn wait_for_pool(host: &Host, what: &str, check: impl Fn(&Value) -> bool) {
    host.wait_for_health(what, Duration::from_secs(10), |health| {
        let model = health["model"].as_str().unwrap();
        check(&health["models"][model]["instances"])
    });
}

#[test]
fn a_model_scaled_to_zero_answers_its_first_request_and_returns_to_zero_when_idle() {
    let host = Host::start(
        &guest("guest_model"),
        &[
            "--min-instances",
            "0",
            "--max-instances",
            "2",
            "--idle-timeout",
            "300ms",
        ],
    );
    assert!(
        host.log()
            .iter()
            .any(|l| l.contains("elastic, 0 to 2 instances (idle timeout 300ms)")),
        "{}",
        host.log().join("\n")
    );
    let before = pool(&host);
    assert_eq!(
        (before["total"].as_u64(), before["min"].as_u64()),
        (Some(0), Some(0))
    );
    assert_eq!(host.get("/v2/health/ready").status, 200, "ready at zero");

    let reference = reference();
    let mut client = Client::connect(host.addr).unwrap();
    let mut served_by = Vec::new();
    for round in 0..2 {
        for row in 0..3 {
            let request = json!({
                "inputs": [{ "name": "x", "shape": [1, 64], "datatype": "FP32",
                             "data": reference["inputs"][row] }],
            });
            let response = client
                .post_json("/v2/models/digits/infer", &request)
                .unwrap();
            assert_eq!(response.status, 200, "round {round}: {}", response.error());
            assert_eq!(
                response.json()["outputs"][1]["data"][0],
                reference["predicted_labels"][row]
            );
            served_by.push(response.instance());
        }
        assert_eq!(
            pool(&host)["total"],
            1,
            "one instance booted for the requests"
        );
        // Idle past the timeout: the instance retires and the pool is empty.
        wait_for_pool(&host, "back to zero", |p| p["total"] == 0 && p["idle"] == 0);
    }
    // Each round was served by its own freshly booted instance.
    assert_eq!(served_by[0], served_by[2]);
    assert_ne!(served_by[0], served_by[3]);
    assert!(
        host.log()
            .iter()
            .any(|l| l.contains("idle for 300ms (--idle-timeout)")),
        "{}",
        host.log().join("\n")
    );
}

#[test]
fn a_burst_grows_an_elastic_pool_to_its_max_and_it_shrinks_back_with_no_failed_request() {
    let host = Host::start(
        &guest("slow_model"),
        &[
            "--min-instances",
            "1",
            "--max-instances",
            "8",
            "--idle-timeout",
            "500ms",
        ],
    );
    assert_eq!(pool(&host)["total"], 1);
    let addr = host.addr;
    let failures = Arc::new(Mutex::new(Vec::new()));
    let instances = Arc::new(Mutex::new(HashSet::new()));
    let done = Arc::new(AtomicUsize::new(0));
    // 16 clients, each 6 requests of 100 ms: far more than one instance can
    // take, so the queue boots instances up to the maximum.
    let clients: Vec<_> = (0..16)
        .map(|_| {
            let (failures, instances, done) = (
                Arc::clone(&failures),
                Arc::clone(&instances),
                Arc::clone(&done),
            );
            std::thread::spawn(move || {
                let mut client = Client::connect(addr).unwrap();
                for _ in 0..6 {
                    let response = client
                        .post_json("/predict", &json!({ "inputs": [100] }))
                        .unwrap();
                    if response.status == 200 {
                        instances.lock().unwrap().insert(response.instance());
                    } else {
                        failures.lock().unwrap().push(response.status);
                    }
                    done.fetch_add(1, Ordering::SeqCst);
                }
            })
        })
        .collect();
    let mut peak = 0;
    while done.load(Ordering::SeqCst) < 96 {
        let total = pool(&host)["total"].as_u64().unwrap();
        assert!(total <= 8, "never past --max-instances: {total}");
        peak = peak.max(total);
        // Sampling the pool while the burst runs: the interval is the point.
        std::thread::sleep(Duration::from_millis(10));
    }
    for client in clients {
        client.join().unwrap();
    }
    assert_eq!(
        *failures.lock().unwrap(),
        Vec::<u16>::new(),
        "no failed request"
    );
    assert_eq!(peak, 8, "the burst grew the pool to its maximum");
    assert_eq!(instances.lock().unwrap().len(), 8);
    // Idle past the timeout, the pool goes back to its minimum, and a request
    // is still served at once.
    wait_for_pool(&host, "back to the minimum", |p| p["total"] == 1);
    let mut client = Client::connect(addr).unwrap();
    let response = client
        .post_json("/predict", &json!({ "inputs": [1] }))
        .unwrap();
    assert_eq!(response.status, 200);
    let log = host.log();
    assert_eq!(
        log.iter().filter(|l| l.contains("idle for 500ms")).count(),
        7,
        "seven retired:\n{}",
        log.join("\n")
    );
}

#[test]
fn contradictory_pool_flags_are_refused_with_exit_2() {
    let model = guest("guest_model");
    let (status, _, stderr) = support::run_command(&[
        "--min-instances".as_ref(),
        "4".as_ref(),
        "--max-instances".as_ref(),
        "2".as_ref(),
        model.as_os_str(),
    ]);
    assert_eq!(status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("min-instances = 4 is more than max-instances = 2 (from the flags)"),
        "{stderr}"
    );
}

#[test]
fn ttin_adds_and_ttou_removes_one_instance_but_never_the_last() {
    let host = Host::start(&guest("fault_model"), &["--instances", "2"]);
    host.signal("TTIN");
    host.wait_for_health("after one TTIN", Duration::from_secs(10), |h| {
        h["instances"]["total"] == 3
    });
    host.signal("TTIN");
    host.wait_for_health("after two TTIN", Duration::from_secs(10), |h| {
        h["instances"]["total"] == 4
    });
    host.signal("TTOU");
    host.wait_for_health("after TTOU", Duration::from_secs(10), |h| {
        h["instances"]["total"] == 3
    });
    // Signals sent together may arrive as one: each waits for the last.
    let handled = || {
        host.log()
            .iter()
            .filter(|l| l.contains("TTOU: shrinking") || l.contains("TTOU ignored"))
            .count()
    };
    for _ in 0..4 {
        let before = handled();
        host.signal("TTOU");
        support::eventually("the TTOU handled", Duration::from_secs(10), || {
            handled() > before
        });
    }
    host.wait_for_health("never below one", Duration::from_secs(10), |h| {
        h["instances"]["total"] == 1 && h["instances"]["target"] == 1
    });
    assert_eq!(host.post_json(FAULT_INFER, &fault_action(0, 5)).status, 200);
    assert_eq!(host.get("/v2/health/ready").status, 200);
}
