//! ONNX models: `wasm-host pack` turns one into a pre-initialised model
//! component, `wasm-host serve model.onnx` packs on the fly, and a bad file
//! fails at pack time with one line, never later.
//!
//! Needs the ONNX runner built (`make onnx-runner`, part of `make test`). The
//! CNN against onnxruntime and tritonclient are in tests/python/test_onnx.py.

mod support;

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use serde_json::{Value, json};
use support::{Host, run_command, scratch_file, test_cache_dir, workspace_root};

fn digits_onnx() -> PathBuf {
    workspace_root().join("guest-model/weights/digits_mlp.onnx")
}

fn fixture(name: &str) -> PathBuf {
    workspace_root().join("tests/fixtures/onnx").join(name)
}

/// Runs `wasm-host pack`; answers the exit code, stdout and stderr.
fn pack(model: &Path, out: &Path, extra: &[&str]) -> (Option<i32>, String, String) {
    let mut args = vec![
        "pack".to_string(),
        model.display().to_string(),
        "-o".into(),
        out.display().to_string(),
    ];
    args.extend(extra.iter().map(|s| s.to_string()));
    let (status, stdout, stderr) = run_command(&args);
    (status.code(), stdout, stderr)
}

/// Packs the digits model once per test process: the first pack compiles
/// the runner into the test's compile cache, and every other test (the bad
/// inputs too) reuses it rather than compiling it again in parallel.
fn packed_digits() -> &'static Path {
    static PACKED: OnceLock<PathBuf> = OnceLock::new();
    PACKED.get_or_init(|| {
        let out = scratch_file("digits.wasm");
        let (code, stdout, stderr) = pack(&digits_onnx(), &out, &[]);
        assert_eq!(code, Some(0), "pack failed: {stdout}{stderr}");
        assert!(
            stdout.contains("packed ") && stdout.contains("model digits_mlp v1"),
            "{stdout}"
        );
        out
    })
}

fn rows(reference: &Value, key: &str) -> Vec<Vec<f64>> {
    reference[key]
        .as_array()
        .unwrap()
        .iter()
        .map(|row| {
            row.as_array()
                .unwrap()
                .iter()
                .map(|v| v.as_f64().unwrap())
                .collect()
        })
        .collect()
}

/// All 200 reference rows in one request: labels exact, probabilities within 1e-5.
fn assert_matches_scikit_learn(host: &Host, model: &str) {
    let reference = support::reference();
    let inputs = rows(&reference, "inputs");
    let flat: Vec<f64> = inputs.iter().flatten().copied().collect();
    let response = host.post_json(
        &format!("/v2/models/{model}/infer"),
        &json!({"inputs": [{"name": "input", "shape": [inputs.len(), 64], "datatype": "FP32", "data": flat}]}),
    );
    assert_eq!(
        response.status,
        200,
        "{}",
        String::from_utf8_lossy(&response.body)
    );
    let body = response.json();
    let output = |name: &str| {
        body["outputs"]
            .as_array()
            .unwrap()
            .iter()
            .find(|o| o["name"] == name)
            .unwrap_or_else(|| panic!("no output {name} in {body}"))
            .clone()
    };
    let labels = output("label");
    assert_eq!(labels["datatype"], "INT64");
    assert_eq!(labels["shape"], json!([200]));
    assert_eq!(labels["data"], reference["predicted_labels"]);
    let probabilities = output("probabilities");
    assert_eq!(probabilities["shape"], json!([200, 10]));
    let expected: Vec<f64> = rows(&reference, "probabilities")
        .into_iter()
        .flatten()
        .collect();
    let got: Vec<f64> = probabilities["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_f64().unwrap())
        .collect();
    assert_eq!(got.len(), expected.len());
    let worst = got
        .iter()
        .zip(&expected)
        .map(|(a, b)| (a - b).abs())
        .fold(0.0, f64::max);
    assert!(
        worst <= 1e-5,
        "largest difference from scikit-learn: {worst}"
    );
}

#[test]
fn packed_digits_matches_scikit_learn_on_all_200_reference_rows() {
    let host = Host::start(packed_digits(), &["--instances", "2"]);
    let meta = host.get("/v2/models/digits_mlp").json();
    assert_eq!(meta["versions"], json!(["1"]), "{meta}");
    assert_eq!(
        meta["inputs"],
        json!([{"name": "input", "datatype": "FP32", "shape": [-1, 64]}])
    );
    assert_eq!(
        meta["outputs"],
        json!([
            {"name": "label", "datatype": "INT64", "shape": [-1]},
            {"name": "probabilities", "datatype": "FP32", "shape": [-1, 10]}
        ])
    );
    assert_matches_scikit_learn(&host, "digits_mlp");
}

#[test]
fn inspect_says_the_component_was_packed_from_onnx() {
    let (status, stdout, stderr) = run_command(&["inspect".as_ref(), packed_digits().as_os_str()]);
    assert!(status.success(), "{stdout}{stderr}");
    let sha = sha256_hex(&std::fs::read(digits_onnx()).unwrap());
    for expected in [
        "packed:   from ONNX digits_mlp.onnx (27581 bytes, sha256 ".to_string(),
        sha,
        "producer: skl2onnx 1.20.0".into(),
        "opset:    ai.onnx.ml 1, ai.onnx 16".into(),
        "operators: Add, ArgMax, Cast, Identity, MatMul, Relu, Reshape, Softmax, \
         ai.onnx.ml.ArrayFeatureExtractor (15 nodes)"
            .into(),
        "contract: fits wasm-host:model/model@0.2.0".into(),
        "name:     digits_mlp".into(),
    ] {
        assert!(stdout.contains(&expected), "{expected:?} not in:\n{stdout}");
    }
}

fn sha256_hex(bytes: &[u8]) -> String {
    // The host's own dependency, so the test checks against an independent
    // computation rather than the packer's.
    let out = std::process::Command::new("sha256sum")
        .arg("-")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .and_then(|mut child| {
            use std::io::Write;
            child.stdin.take().unwrap().write_all(bytes)?;
            child.wait_with_output()
        })
        .expect("sha256sum");
    String::from_utf8_lossy(&out.stdout)[..64].to_string()
}

#[test]
fn serving_an_onnx_file_packs_it_once_and_caches_the_result() {
    // The same file name as the packed test model, so the packed bytes are
    // the same and the compile cache already holds their code.
    packed_digits();
    let dir = scratch_file("onnx");
    std::fs::create_dir_all(&dir).unwrap();
    let onnx = dir.join("digits_mlp.onnx");
    std::fs::copy(digits_onnx(), &onnx).unwrap();
    let name = "digits_mlp";

    let host = Host::start(&onnx, &["--instances", "2"]);
    assert!(
        host.log()
            .iter()
            .any(|l| l.contains("into a model component")),
        "{:#?}",
        host.log()
    );
    assert_matches_scikit_learn(&host, name);
    drop(host);

    let again = Host::start(&onnx, &["--instances", "2"]);
    assert!(
        again
            .log()
            .iter()
            .any(|l| l.contains("found in the pack cache")),
        "{:#?}",
        again.log()
    );
    assert_matches_scikit_learn(&again, name);

    let dir = test_cache_dir().join("onnx");
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&dir).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o700, "{}", dir.display());
    }
    let _ = std::fs::remove_dir_all(dir);
}

/// Every bad file: exit 3, one `error:` line naming the problem, no output file.
fn assert_refused(model: &Path, extra: &[&str], expected: &[&str]) {
    packed_digits();
    let out = scratch_file("refused.wasm");
    let (code, stdout, stderr) = pack(model, &out, extra);
    assert_eq!(code, Some(3), "{stdout}{stderr}");
    let lines: Vec<&str> = stderr.lines().filter(|l| !l.trim().is_empty()).collect();
    assert_eq!(lines.len(), 1, "want one line, got:\n{stderr}");
    assert!(lines[0].starts_with("error: "), "{stderr}");
    for needle in expected {
        assert!(lines[0].contains(needle), "{needle:?} not in {stderr}");
    }
    assert!(
        !out.exists(),
        "a refused model must not leave a component behind"
    );
}

#[test]
fn a_truncated_file_is_refused_at_pack_time() {
    let bytes = std::fs::read(digits_onnx()).unwrap();
    let truncated = scratch_file("truncated.onnx");
    std::fs::write(&truncated, &bytes[..bytes.len() / 2]).unwrap();
    assert_refused(&truncated, &[], &["truncated.onnx", "not an ONNX model"]);
}

#[test]
fn a_file_that_is_not_onnx_is_refused_at_pack_time() {
    let text = scratch_file("notes.onnx");
    std::fs::write(&text, "these are my notes, not a model\n").unwrap();
    assert_refused(&text, &[], &["notes.onnx", "not an ONNX model"]);
}

#[test]
fn an_operator_tract_lacks_is_named_with_its_node() {
    assert_refused(
        &fixture("unsupported.onnx"),
        &[],
        &["operator ai.onnx.Det (node `determinant`) is not supported"],
    );
}

#[test]
fn a_zipmap_output_is_refused_with_the_export_option_to_use() {
    assert_refused(&fixture("zipmap.onnx"), &[], &["ZipMap", "zipmap=False"]);
}

#[test]
fn a_graph_whose_shapes_cannot_be_resolved_is_refused() {
    assert_refused(
        &fixture("bad_shapes.onnx"),
        &[],
        &["cannot resolve the graph's types and shapes"],
    );
}

#[test]
fn a_model_too_big_for_the_memory_limit_is_refused() {
    assert_refused(
        &fixture("huge_constant.onnx"),
        &["--memory-limit", "64MiB"],
        &[
            "needs more than the memory limit of 64 MiB",
            "--memory-limit",
        ],
    );
}

#[test]
fn a_repository_folder_holding_model_onnx_is_served_under_the_folders_name() {
    packed_digits();
    let dir = scratch_file("onnx-repository");
    std::fs::create_dir_all(dir.join("sklearn-digits")).unwrap();
    std::fs::copy(digits_onnx(), dir.join("sklearn-digits/model.onnx")).unwrap();
    let repository = dir.display().to_string();
    let host = Host::start_without_model(
        &["--model-repository", &repository, "--instances", "2"],
        &[],
    );
    assert_matches_scikit_learn(&host, "sklearn-digits");
}
