//! Running it by hand and plugging it into what operators have: metrics that
//! promtool accepts, configuration precedence, JSON logs, and the inspect,
//! compile and plan commands.

mod support;

use std::io::Write;
use std::process::{Command, Stdio};
use std::time::Duration;

use serde_json::{Value, json};
use support::{
    Client, FAULT_INFER, Host, fault_action, guest, run_command, run_command_with_env,
    scratch_file, test_cache_dir,
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
        "contract: fits wasm-host:model/model@0.2.0",
        "name:     digits",
        "x                FP32   [-1, 64]",
        "wasi:cli/stdout",
        "wasm-host:model/model@0.2.0 (instance)",
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
fn inspect_names_the_contract_an_old_model_was_built_against_and_says_to_rebuild() {
    let old = guest("contract_0_1_model");
    let (status, stdout, stderr) = run_command(&["inspect", old.to_str().unwrap()]);
    assert_eq!(status.code(), Some(3), "{stdout}{stderr}");
    assert!(
        stdout.contains("wasm-host:model/model@0.1.0 (instance)"),
        "{stdout}"
    );
    assert!(
        stdout.contains(
            "contract: does not fit: built against wasm-host:model@0.1.0; \
             this wasm-host speaks 0.2.0"
        ),
        "{stdout}"
    );
    assert!(
        stderr.contains("rebuild it with this repository's guest SDK"),
        "{stderr}"
    );
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
    // A sleeping model still uses some CPU; a clock too coarse to see it
    // would claim the cores sustain billions of requests.
    assert!(!stdout.contains("cpu:       0.0ns"), "{stdout}");
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

/// Waits up to 10 s for a log line containing `needle`.
fn wait_for_log(host: &Host, needle: &str) {
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while !host.log().iter().any(|line| line.contains(needle)) {
        assert!(
            std::time::Instant::now() < deadline,
            "no {needle:?} in the log:\n{}",
            host.log().join("\n")
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn a_closed_stdout_ends_inspect_and_plan_quietly() {
    let model = guest("guest_model");
    for args in [
        vec!["inspect"],
        vec!["plan", "--rate", "10", "--samples", "1"],
    ] {
        let mut child = Command::new(env!("CARGO_BIN_EXE_wasm-host"))
            .args(&args)
            .arg(&model)
            .env("WASM_HOST_CACHE_DIR", test_cache_dir())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        // `| head -0`: the reader is gone before the first line.
        drop(child.stdout.take());
        let output = child.wait_with_output().unwrap();
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(!stderr.contains("panicked"), "{args:?}: {stderr}");
        assert!(!stderr.contains("error:"), "{args:?}: {stderr}");
        assert_eq!(output.status.code(), Some(0), "{args:?}: {stderr}");
    }
}

#[test]
fn inspect_and_plan_use_the_cache_dir_from_flags_and_environment() {
    let model = guest("echo_model");
    let dir = scratch_file("tool-cache");
    let _ = std::fs::remove_dir_all(&dir);
    let env = [("WASM_HOST_CACHE_DIR", dir.as_os_str())];
    let inspect = ["inspect".as_ref(), model.as_os_str()];
    let (status, first, stderr) = run_command_with_env(&inspect, &env);
    assert!(status.success(), "{first}{stderr}");
    assert!(first.contains("compiled in"), "{first}");
    let (_, second, _) = run_command_with_env(&inspect, &env);
    assert!(second.contains("loaded from the compile cache"), "{second}");
    assert_eq!(std::fs::read_dir(&dir).unwrap().count(), 1);

    let (status, stdout, stderr) = run_command(&[
        "plan".as_ref(),
        model.as_os_str(),
        "--rate".as_ref(),
        "1".as_ref(),
        "--samples".as_ref(),
        "1".as_ref(),
        "--cache-dir".as_ref(),
        dir.as_os_str(),
    ]);
    assert!(status.success(), "{stdout}{stderr}");
    let (status, stdout, _) = run_command(&["inspect", "--no-cache", model.to_str().unwrap()]);
    assert!(
        status.success() && stdout.contains("compiled in"),
        "{stdout}"
    );
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn plan_times_the_calls_it_names_and_advises_an_instance_per_core() {
    // A model of microseconds: Little's law alone would say one instance.
    let model = guest("guest_model");
    let (status, stdout, stderr) = run_command(&["plan", model.to_str().unwrap(), "--rate", "10"]);
    assert!(status.success(), "{stdout}{stderr}");
    assert!(stdout.contains("median of 20 timed calls"), "{stdout}");
    assert!(stdout.contains("cpu:"), "{stdout}");
    let cores: u64 = stdout
        .split("cores:")
        .nth(1)
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no cores in\n{stdout}"));
    let instances: u64 = stdout
        .split("--instances ")
        .nth(1)
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no --instances in\n{stdout}"));
    assert!(
        instances >= cores,
        "{instances} instances for {cores} cores:\n{stdout}"
    );
    if cores > 1 {
        assert!(stdout.contains("one instance per core"), "{stdout}");
    }
}

#[test]
fn bind_accepts_a_host_name_and_a_bare_port() {
    let model = guest("echo_model");
    let host = Host::start_at(&model, "localhost:0", &["--instances", "1"]);
    assert!(host.addr.ip().is_loopback(), "{}", host.addr);
    assert_eq!(host.get("/health").status, 200);
    drop(host);

    let host = Host::start_at(&model, ":0", &["--instances", "1"]);
    assert!(host.addr.ip().is_unspecified(), "{}", host.addr);
    let local = std::net::SocketAddr::from(([127, 0, 0, 1], host.addr.port()));
    let response = support::request(local, "GET", "/health", &[], b"").unwrap();
    assert_eq!(response.status, 200);
    wait_for_log(&host, "serves beyond this machine");

    let (status, _, stderr) = run_command(&["--bind", "localhost", model.to_str().unwrap()]);
    assert_eq!(status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains(":PORT"),
        "the error shows the accepted forms: {stderr}"
    );
}

#[test]
fn memory_limit_takes_kubernetes_units_and_help_lists_metrics() {
    let host = Host::start(
        &guest("echo_model"),
        &["--instances", "1", "--memory-limit", "128Mi"],
    );
    wait_for_log(&host, "memory limit 128 MiB each");
    let (status, stdout, _) = run_command(&["--help"]);
    assert!(status.success());
    assert!(stdout.contains("GET  /metrics"), "{stdout}");
}
