//! The promises that must hold on every architecture the host runs on, with
//! the very `.wasm` files built here: the digits model's outputs, traps,
//! deadlines, memory caps, reloads and precompiled artifacts.
//!
//! `make test` runs them against this build. `make arm-test` runs them again
//! against the aarch64 build under qemu (`WASM_HOST_BIN`, `WASM_HOST_RUNNER`,
//! `WASM_HOST_ARCH`; see tests/support), where the digits outputs are compared
//! bit for bit with those of this build's native host, and artifacts are
//! compiled by this build (`wasm-host compile --target`) as they would be on
//! an x86 build machine.

mod support;

/// Every host here runs with a small memory limit and budget: 136 pool slots
/// of 4 × 34 MiB memories, 18 GiB of address space. Reserving address space
/// is free on a real ARM board, but qemu-user keeps bookkeeping for every
/// guest page reserved (about 24 bytes per 4 KiB page): the default 256 MiB
/// limit and a budget of three quarters of this machine's memory would cost
/// it gigabytes.
const SMALL: [&str; 4] = ["--memory-limit", "32MiB", "--memory-budget", "1GiB"];

fn small(args: &[&'static str]) -> Vec<&'static str> {
    SMALL.iter().chain(args).copied().collect()
}

use std::ffi::OsStr;
use std::path::PathBuf;
use std::time::Duration;

use serde_json::{Value, json};
use support::{
    Client, FAULT_INFER, Host, arch_under_test, fault_action, guest, native_wasm_host, reference,
    run_command, scratch_file,
};

/// Every output number of a response, as the f32 bits it prints: two hosts
/// agree bit for bit exactly when these are equal (the host prints the
/// shortest text that reads back as the same f32).
fn output_bits(body: &Value) -> Vec<u32> {
    fn walk(value: &Value, bits: &mut Vec<u32>) {
        match value {
            Value::Number(n) => bits.push((n.as_f64().unwrap() as f32).to_bits()),
            Value::Array(items) => items.iter().for_each(|v| walk(v, bits)),
            Value::Object(fields) => fields.values().for_each(|v| walk(v, bits)),
            _ => {}
        }
    }
    let mut bits = Vec::new();
    walk(&body["outputs"], &mut bits);
    bits
}

/// The digits outputs of one host for the 200 reference rows, one by one
/// through both endpoints, then as one batch.
fn digits_outputs(host: &Host) -> Vec<Vec<u32>> {
    let reference = reference();
    let inputs = reference["inputs"].as_array().unwrap();
    let labels = reference["predicted_labels"].as_array().unwrap();
    let probabilities = reference["probabilities"].as_array().unwrap();
    assert_eq!(inputs.len(), 200);
    let mut client = Client::connect(host.addr).unwrap();
    let mut outputs = Vec::new();
    for (row, input) in inputs.iter().enumerate() {
        let simple = client
            .post_json("/predict", &json!({ "inputs": [input] }))
            .unwrap();
        assert_eq!(simple.status, 200, "row {row}: {}", simple.error());
        let body = simple.json();
        assert_eq!(body["prediction"], labels[row], "row {row} via /predict");
        let got = body["outputs"]["probabilities"][0].as_array().unwrap();
        for (g, w) in got.iter().zip(probabilities[row].as_array().unwrap()) {
            let (g, w) = (g.as_f64().unwrap(), w.as_f64().unwrap());
            assert!(
                (g - w).abs() <= 1e-5,
                "row {row}: {g} is not scikit-learn's {w}"
            );
        }
        outputs.push(output_bits(&body));

        let request = json!({
            "inputs": [{ "name": "x", "shape": [1, 64], "datatype": "FP32", "data": input }],
        });
        let oip = client
            .post_json("/v2/models/digits/infer", &request)
            .unwrap();
        assert_eq!(oip.status, 200, "row {row}: {}", oip.error());
        outputs.push(output_bits(&oip.json()));
    }
    let flat: Vec<Value> = inputs
        .iter()
        .flat_map(|r| r.as_array().unwrap().clone())
        .collect();
    let batch = client
        .post_json(
            "/v2/models/digits/infer",
            &json!({ "inputs": [{ "name": "x", "shape": [200, 64], "datatype": "FP32", "data": flat }] }),
        )
        .unwrap();
    assert_eq!(batch.status, 200, "{}", batch.error());
    outputs.push(output_bits(&batch.json()));
    outputs
}

#[test]
fn the_200_digits_rows_give_bit_identical_outputs_to_the_native_host() {
    let model = guest("guest_model");
    let under_test = Host::start(&model, &small(&["--instances", "2"]));
    let got = digits_outputs(&under_test);
    let native = Host::start_native(&model, &small(&["--instances", "2"]));
    let want = digits_outputs(&native);
    assert_eq!(got.len(), want.len());
    for (i, (g, w)) in got.iter().zip(&want).enumerate() {
        assert!(!g.is_empty());
        assert_eq!(
            g,
            w,
            "response {i} (row {}) differs from the native host's, bit for bit",
            i / 2
        );
    }
    eprintln!(
        "{} responses, {} numbers: bit-identical ({} host vs native {})",
        got.len(),
        got.iter().map(Vec::len).sum::<usize>(),
        arch_under_test(),
        std::env::consts::ARCH
    );
}

#[test]
fn traps_deadlines_and_memory_caps_fail_alone_and_the_instance_is_replaced() {
    let host = Host::start(
        &guest("fault_model"),
        &small(&["--instances", "2", "--timeout", "1s"]),
    );
    let ok = host.post_json(FAULT_INFER, &fault_action(0, 7));
    assert_eq!(ok.status, 200, "{}", ok.error());
    assert_eq!(ok.json()["outputs"][0]["data"], json!([7]));

    let trap = host.post_json(FAULT_INFER, &fault_action(1, 0));
    assert_eq!(trap.status, 500);
    assert!(trap.error().contains("asked to panic"), "{}", trap.error());

    // A spinning guest is stopped by the epoch deadline.
    let spin = host.post_json(FAULT_INFER, &fault_action(2, 0));
    assert_eq!(spin.status, 504, "{}", spin.error());
    assert!(spin.error().contains("deadline of 1s"), "{}", spin.error());

    let hog = host.post_json(FAULT_INFER, &fault_action(3, 64));
    assert_eq!(hog.status, 507, "{}", hog.error());
    assert!(
        hog.error().contains("memory cap of 32 MiB"),
        "{}",
        hog.error()
    );

    for n in 0..4 {
        let next = host.post_json(FAULT_INFER, &fault_action(0, n));
        assert_eq!(next.status, 200, "{}", next.error());
    }
    host.wait_for_health("three instances replaced", Duration::from_secs(30), |h| {
        h["instances"]["total"] == 2 && h["instances"]["replaced"] == 3
    });
}

#[test]
fn hup_reloads_the_model_file() {
    let path = scratch_file("portable-model.wasm");
    std::fs::copy(guest("guest_model"), &path).unwrap();
    let host = Host::start(&path, &small(&["--instances", "2"]));
    assert_eq!(host.get("/v2/models/digits/ready").status, 200);
    let staged = scratch_file("portable-staged.wasm");
    std::fs::copy(guest("echo_model"), &staged).unwrap();
    std::fs::rename(&staged, &path).unwrap();
    host.signal("HUP");
    host.wait_for_log("reloaded", Duration::from_secs(120));
    assert_eq!(host.get("/v2/models/echo/ready").status, 200);
    let _ = std::fs::remove_file(path);
}

/// `wasm-host compile --target TRIPLE`, run by this build (the build machine).
fn compile_for(triple: &str) -> PathBuf {
    let output = scratch_file(&format!("digits-{triple}.cwasm"));
    let done = native_wasm_host()
        .args(["compile", "--memory-limit", "32MiB", "--target", triple])
        .arg(guest("guest_model"))
        .arg("-o")
        .arg(&output)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&done.stdout);
    assert!(
        done.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&done.stderr)
    );
    let arch = triple.split('-').next().unwrap();
    assert!(stdout.contains(&format!("for {arch}")), "{stdout}");
    output
}

fn triple(arch: &str) -> String {
    format!("{arch}-unknown-linux-gnu")
}

#[test]
fn an_artifact_compiled_for_this_architecture_serves_and_one_for_another_is_refused() {
    let here = arch_under_test();
    let other = if here == "aarch64" {
        "x86_64"
    } else {
        "aarch64"
    };
    let own = compile_for(&triple(&here));
    let host = Host::start(&own, &small(&["--instances", "1", "--allow-precompiled"]));
    let row = &reference()["inputs"][0];
    let response = host.post_json("/predict", &json!({ "inputs": [row] }));
    assert_eq!(response.status, 200, "{}", response.error());
    assert_eq!(
        response.json()["prediction"],
        reference()["predicted_labels"][0]
    );
    assert!(host.log().join("\n").contains("loaded precompiled in"));
    drop(host);

    let foreign = compile_for(&triple(other));
    let mut args: Vec<&OsStr> = small(&["--bind", "127.0.0.1:0"])
        .into_iter()
        .map(OsStr::new)
        .collect();
    args.extend([OsStr::new("--allow-precompiled"), foreign.as_os_str()]);
    let (status, _, stderr) = run_command(&args);
    assert_eq!(status.code(), Some(3), "{stderr}");
    let line = stderr.lines().find(|l| l.starts_with("error:")).unwrap();
    let want = format!("was compiled for {other}, this host is {here}");
    assert!(line.contains(&want), "{stderr}");
    assert!(
        line.contains(&format!("wasm-host compile --target {}", triple(&here))),
        "{stderr}"
    );
    // Without --allow-precompiled it is refused for what it is too.
    let without: Vec<&OsStr> = args
        .iter()
        .copied()
        .filter(|a| *a != "--allow-precompiled")
        .collect();
    let (status, _, stderr) = run_command(&without);
    assert_eq!(status.code(), Some(3), "{stderr}");
    assert!(stderr.contains(&want), "{stderr}");
    for path in [own, foreign] {
        let _ = std::fs::remove_file(path);
    }
}
