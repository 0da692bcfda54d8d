//! Running it by hand and plugging it into what operators have: metrics that
//! promtool accepts, configuration precedence, JSON logs, and the inspect,
//! compile and plan commands.

mod support;

use std::io::Write;
use std::process::{Command, Stdio};
use std::time::Duration;

use serde_json::{Value, json};
use support::{
    Client, FAULT_INFER, Host, fault_action, guest, run_command, scratch_file, test_cache_dir,
};

#[test]
fn metrics_count_every_outcome_and_pass_promtool() {
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
        while host.get("/health").json()["instances"]["idle"] != 1 {
            std::thread::sleep(Duration::from_millis(10));
        }
    }
    // Overloaded: the only instance is busy and the queue holds nobody.
    let mut busy = Client::connect(host.addr).unwrap();
    busy.send_only(
        "POST",
        FAULT_INFER,
        &serde_json::to_vec(&fault_action(4, 1000)).unwrap(),
    );
    std::thread::sleep(Duration::from_millis(200));
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
        let line = format!("wasm_host_inference_requests_total{{outcome=\"{outcome}\"}} 1");
        assert!(text.contains(&line), "missing {line} in\n{text}");
    }
    for cause in ["trap", "timeout", "memory_cap"] {
        let line = format!("wasm_host_instance_replacements_total{{cause=\"{cause}\"}} 1");
        assert!(text.contains(&line), "missing {line}");
    }
    for name in [
        "wasm_host_inference_queue_duration_seconds_count",
        "wasm_host_inference_compute_duration_seconds_count",
        "wasm_host_pending_requests 1",
        "wasm_host_instances 1",
        "wasm_host_instances_busy 1",
        "wasm_host_instance_memory_bytes{instance=",
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
fn settings_come_from_flags_then_environment_then_the_config_file() {
    let config = scratch_file("wasm-host.toml");
    std::fs::write(
        &config,
        "instances = 3\nmax-queue = 7\nmax-body = \"1KiB\"\ntimeout = \"2s\"\n",
    )
    .unwrap();
    let host = Host::start_with_env(
        &guest("guest_model"),
        &["--config", config.to_str().unwrap(), "--instances", "2"],
        &[("WASM_HOST_MAX_QUEUE", "9")],
    );
    let health = host.get("/health").json();
    assert_eq!(
        health["instances"]["total"], 2,
        "the flag wins over the file"
    );
    assert_eq!(
        health["queue"]["max"], 9,
        "the environment wins over the file"
    );
    let big = json!({ "inputs": [vec![0.25; 64]], "padding": "x".repeat(2048) });
    assert_eq!(
        host.post_json("/predict", &big).status,
        413,
        "the file's max-body applies"
    );

    std::fs::write(&config, "instances = 2\nbogus = 1\n").unwrap();
    let (status, _, stderr) = run_command(&["--config", config.to_str().unwrap(), "x.wasm"]);
    assert_eq!(status.code(), Some(2));
    assert!(stderr.contains("unknown setting `bogus`"), "{stderr}");
    let _ = std::fs::remove_file(config);
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
    std::thread::sleep(Duration::from_millis(100));
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

#[test]
fn inspect_describes_a_good_component_and_names_what_is_wrong_with_a_bad_one() {
    let model = guest("guest_model");
    let (status, stdout, _) = run_command(&["inspect", model.to_str().unwrap()]);
    assert!(status.success(), "{stdout}");
    for needle in [
        "contract: fits wasm-host:model/model@0.1.0",
        "name:     digits",
        "x                FP32   [-1, 64]",
        "wasi:cli/stdout",
        "wasm-host:model/model@0.1.0 (instance)",
    ] {
        assert!(stdout.contains(needle), "{needle:?} not in\n{stdout}");
    }
    let empty = scratch_file("empty.wasm");
    std::fs::write(&empty, b"\0asm\x0d\0\x01\0").unwrap();
    let (status, stdout, stderr) = run_command(&["inspect", empty.to_str().unwrap()]);
    assert_eq!(status.code(), Some(3));
    assert!(stdout.contains("contract: does not fit"), "{stdout}");
    assert!(
        stderr.contains("does not export the model contract"),
        "{stderr}"
    );
    let _ = std::fs::remove_file(empty);
}

#[test]
fn plan_sizes_the_pool_by_littles_law() {
    // 20 requests/s of a 500 ms model: 10 in flight.
    let model = guest("slow_model");
    let (status, stdout, stderr) = run_command(&[
        "plan",
        model.to_str().unwrap(),
        "--rate",
        "20",
        "--input",
        r#"{"inputs": [500]}"#,
        "--samples",
        "3",
    ]);
    assert!(status.success(), "{stdout}{stderr}");
    let instances: f64 = stdout
        .split("--instances ")
        .nth(1)
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no --instances in\n{stdout}"));
    assert!(
        (8.0..=12.0).contains(&instances),
        "planned {instances} for 10 in flight:\n{stdout}"
    );
    assert!(stdout.contains("limit:     the instance count"), "{stdout}");
}

#[test]
fn a_compiled_artifact_serves_and_the_cache_skips_compiling() {
    let model = guest("guest_model");
    let artifact = scratch_file("digits.cwasm");
    let (status, stdout, stderr) = run_command(&[
        "compile",
        model.to_str().unwrap(),
        "-o",
        artifact.to_str().unwrap(),
    ]);
    assert!(status.success(), "{stdout}{stderr}");
    assert!(stdout.contains("compiled digits v1"), "{stdout}");

    assert!(stdout.contains("--allow-precompiled"), "{stdout}");
    let host = Host::start(&artifact, &["--instances", "2", "--allow-precompiled"]);
    assert!(host.log().join("\n").contains("loaded precompiled in"));
    let response = host.post_json("/predict", &json!({ "inputs": [vec![0.5; 64]] }));
    assert_eq!(response.status, 200);
    drop(host);

    let cache = test_cache_dir().join("fresh");
    let _ = std::fs::remove_dir_all(&cache);
    let cache_flag = ["--instances", "1", "--cache-dir", cache.to_str().unwrap()];
    let first = Host::start(&model, &cache_flag).log().join("\n");
    assert!(first.contains("compiled in"), "{first}");
    let second = Host::start(&model, &cache_flag).log().join("\n");
    assert!(
        second.contains("loaded from the compile cache in"),
        "{second}"
    );
    let no_cache = Host::start(&model, &["--instances", "1", "--no-cache"])
        .log()
        .join("\n");
    assert!(no_cache.contains("compiled in"), "{no_cache}");
    let _ = std::fs::remove_file(artifact);
    let _ = std::fs::remove_dir_all(cache);
}
