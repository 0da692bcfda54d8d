//! The repository, uploads, poll mode and elastic pools treat what they are
//! given as hostile: names cannot walk out of the repository, files that
//! are FIFOs, devices or huge cannot stall or bloat the host, settings
//! cannot overflow into panics, elastic pools cannot grow past the memory
//! budget, a cheap ONNX file cannot buy minutes of packing, and failed loads
//! cannot grow the index for ever. Real binary, real components, real HTTP
//! on loopback; each test is a regression test for one way the host broke.
//!
//! The sandbox too: a guest sees no files, environment or arguments, and its
//! output reaches the host log tagged, bounded and escaped.

mod support;

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::{Value, json};
use support::{FAULT_INFER, Host, fault_action, fault_result, guest};

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
    // Each stream ends with a line that says what was dropped.
    support::eventually("both streams' notes", Duration::from_secs(5), || {
        host.log()
            .iter()
            .filter(|l| l.contains(&format!("instance={id}")) && l.contains("dropped"))
            .count()
            >= 2
    });
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

const TOKEN: &str = support::ADMIN_TOKEN;

fn put(dir: &Path, rel: &str, from: &Path) {
    let path = dir.join(rel);
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::copy(from, path).unwrap();
}

fn write(dir: &Path, rel: &str, text: &str) {
    let path = dir.join(rel);
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(path, text).unwrap();
}

/// A repository folder with the digits model, inside a scratch folder that
/// also holds things outside the repository.
fn repository_with_outside() -> (PathBuf, PathBuf) {
    let top = support::scratch_file("jail");
    let repo = top.join("repo");
    put(&repo, "digits/model.wasm", &guest("guest_model"));
    (top, repo)
}

fn start(repo: &Path, control: &str, extra: &[&str]) -> Host {
    let mut args = vec!["--instances", "1", "--repository-poll-interval", "100ms"];
    args.extend_from_slice(extra);
    Host::start_repository(repo, control, &args)
}

fn digits_answers(host: &Host) -> bool {
    let body = json!({ "inputs": [{ "name": "x", "shape": [1, 64], "datatype": "FP32",
                                    "data": support::reference()["inputs"][0] }] });
    host.post_json("/v2/models/digits/infer", &body).status == 200
}

fn live(host: &Host) -> bool {
    support::Client::connect(host.addr)
        .and_then(|mut c| {
            c.set_read_timeout(Duration::from_secs(2));
            c.send("GET", "/v2/health/live", &[], b"")
        })
        .is_ok_and(|r| r.status == 200)
}

#[test]
fn model_names_that_walk_out_of_the_repository_are_refused_and_reveal_nothing_outside() {
    let (top, repo) = repository_with_outside();
    // A component and a precompiled artifact planted outside the repository:
    // with --allow-precompiled, loading the artifact would run native code.
    put(&top, "outside/secret/model.wasm", &guest("echo_model"));
    let artifact = top.join("outside/secret/model.cwasm");
    let (status, out, err) = support::run_command(&[
        "compile".as_ref(),
        guest("echo_model").as_os_str(),
        "-o".as_ref(),
        artifact.as_os_str(),
    ]);
    assert!(status.success(), "{out}{err}");
    // A link inside the repository that leads out of it.
    std::os::unix::fs::symlink(top.join("outside/secret"), repo.join("linked")).unwrap();
    let host = start(&repo, "explicit", &["--allow-precompiled"]);

    let mut refusals = Vec::new();
    for name in [
        "..%2Foutside%2Fsecret",
        "..%2Fnowhere%2Fat-all",
        "%2Fetc",
        top.join("outside/secret").to_str().unwrap(),
        "..",
        "%2E%2E",
    ] {
        let path = format!("/v2/repository/models/{}/load", name.replace('/', "%2F"));
        let response = host.admin(&path, &json!({}), Some(TOKEN));
        assert_eq!(response.status, 400, "{name}: {response:?}");
        let error = response.error();
        assert!(error.contains("path segment"), "{name}: {error}");
        refusals.push(error);
    }
    // Whether the path outside exists changes nothing in the answer.
    let shape = |e: &str| e.replace("outside", "X").replace("secret", "Y");
    assert_eq!(
        shape(&refusals[0])
            .replace("nowhere", "X")
            .replace("at-all", "Y"),
        shape(&refusals[1])
            .replace("nowhere", "X")
            .replace("at-all", "Y")
    );
    let response = host.admin("/v2/repository/models/linked/load", &json!({}), Some(TOKEN));
    assert_eq!(response.status, 404, "{response:?}");
    assert!(
        response.error().contains("leads outside"),
        "{}",
        response.error()
    );
    // The host is alive, serves only its own model, and loaded nothing else.
    assert!(digits_answers(&host));
    let names: Vec<Value> = host
        .repository_index()
        .iter()
        .map(|e| e["name"].clone())
        .collect();
    assert!(
        names.iter().all(|n| n == "digits" || n == "linked"),
        "{names:?}"
    );
    assert!(host.get("/v2/models/echo").status == 404);
}

#[test]
fn upload_names_must_be_printable_bounded_path_segments() {
    let (_top, repo) = repository_with_outside();
    let host = start(&repo, "explicit", &[]);
    let echo = std::fs::read(guest("echo_model")).unwrap();
    let long = "n".repeat(4000);
    for name in [
        "echo%0AINFO%20forged%20log%20line",
        "evil%E2%80%AEgpj.exe",
        long.as_str(),
        "%20padded",
    ] {
        let path = format!("/v2/repository/models/{name}/load");
        let response = host.admin(&path, &support::upload_body(&echo, None), Some(TOKEN));
        assert_eq!(response.status, 400, "{response:?}");
        assert!(
            response.error().len() < 400,
            "a short message: {}",
            response.error()
        );
    }
    assert_eq!(
        host.repository_index().len(),
        1,
        "only digits: {:?}",
        host.repository_index()
    );
    assert!(
        !host.log().iter().any(|l| l.starts_with("INFO forged")),
        "no forged line in the log"
    );
    // A good name still uploads.
    let response = host.admin(
        "/v2/repository/models/echo-2/load",
        &support::upload_body(&echo, None),
        Some(TOKEN),
    );
    assert_eq!(response.status, 200, "{response:?}");
}

#[test]
fn failed_loads_under_ever_new_names_do_not_grow_the_index_without_bound() {
    let (_top, repo) = repository_with_outside();
    let host = start(&repo, "explicit", &[]);
    // A component header with nothing valid after it: each load fails.
    let broken = b"\0asm\x0d\0\x01\0 not a component";
    let mut client = support::Client::connect(host.addr).unwrap();
    let auth = format!("Bearer {TOKEN}");
    let body = serde_json::to_vec(&support::upload_body(broken, None)).unwrap();
    for n in 0..300 {
        let path = format!("/v2/repository/models/fail-{n}/load");
        let response = client
            .send("POST", &path, &[("Authorization", &auth)], &body)
            .unwrap();
        assert_eq!(response.status, 400, "{response:?}");
    }
    let entries = host.repository_index();
    assert!(entries.len() <= 257, "{} entries", entries.len());
    // The newest failures keep their reasons; the host still serves.
    let (state, reason) = host.model_state("fail-299").unwrap();
    assert_eq!(state, "UNAVAILABLE");
    assert!(!reason.is_empty());
    assert_eq!(host.model_state("digits").unwrap().0, "READY");
    assert!(digits_answers(&host));
}

#[test]
fn a_polled_repository_refuses_fifos_devices_and_huge_files_without_stalling_the_host() {
    let (_top, repo) = repository_with_outside();
    let host = start(&repo, "poll", &[]);
    assert!(digits_answers(&host));

    // Each folder is made outside the repository and moved in whole, so the
    // poll never sees one half made.
    let staging = repo.parent().unwrap().join("staging");
    // A model.toml that is a FIFO would block a reader for ever.
    put(&staging, "fifo/model.wasm", &guest("echo_model"));
    support::mkfifo(&staging.join("fifo/model.toml"));
    // A model.toml that is /dev/zero would never end.
    put(&staging, "zero/model.wasm", &guest("echo_model"));
    std::os::unix::fs::symlink("/dev/zero", staging.join("zero/model.toml")).unwrap();
    // A sparse 6 GiB ONNX file would be read whole.
    std::fs::create_dir_all(staging.join("sparse")).unwrap();
    std::fs::File::create(staging.join("sparse/model.onnx"))
        .unwrap()
        .set_len(6 << 30)
        .unwrap();
    for name in ["fifo", "zero", "sparse"] {
        std::fs::rename(staging.join(name), repo.join(name)).unwrap();
    }

    support::eventually(
        "three refusals in the index",
        Duration::from_secs(30),
        || {
            ["fifo", "zero", "sparse"].iter().all(|name| {
                host.model_state(name)
                    .is_some_and(|(state, _)| state == "UNAVAILABLE")
            })
        },
    );
    let reason = |name| host.model_state(name).unwrap().1;
    assert!(
        reason("fifo").contains("not a regular file"),
        "{}",
        reason("fifo")
    );
    assert!(
        reason("zero").contains("leads outside"),
        "{}",
        reason("zero")
    );
    assert!(
        reason("sparse").contains("larger than the 2048 MiB"),
        "{}",
        reason("sparse")
    );
    // Meanwhile, and after, the host answered everything.
    assert!(live(&host));
    assert!(digits_answers(&host));
    assert!(host.rss() < 512 << 20, "RSS {} MiB", host.rss() >> 20);
    // A good model added later still loads: the poll loop lives on.
    put(&staging, "echo/model.wasm", &guest("echo_model"));
    std::fs::rename(staging.join("echo"), repo.join("echo")).unwrap();
    support::eventually("echo to load", Duration::from_secs(30), || {
        host.model_state("echo")
            .is_some_and(|(state, _)| state == "READY")
    });
    // TERM stops the host as usual.
    let mut host = host;
    host.signal("TERM");
    assert!(
        host.wait(Duration::from_secs(15)).is_some(),
        "TERM stops it"
    );
}

#[test]
fn durations_too_long_for_a_clock_are_refused_at_load_and_the_poll_loop_lives_on() {
    let (_top, repo) = repository_with_outside();
    put(&repo, "forever/model.wasm", &guest("echo_model"));
    write(&repo, "forever/model.toml", "timeout = 1e20\n");
    let host = start(&repo, "poll", &[]);
    let (state, reason) = host.model_state("forever").unwrap();
    assert_eq!(state, "UNAVAILABLE");
    assert!(reason.contains("7 days"), "{reason}");
    // Over the API: refused with a 400, nothing served.
    for config in [
        r#"{"timeout": 1e19}"#,
        r#"{"timeout": 1e20}"#,
        r#"{"queue_timeout": 1e300}"#,
    ] {
        let body = json!({ "parameters": { "config": config } });
        let response = host.admin("/v2/repository/models/forever/load", &body, Some(TOKEN));
        assert_eq!(response.status, 400, "{config}: {response:?}");
        assert!(response.error().contains("days"), "{}", response.error());
    }
    // The poll loop still loads what comes next.
    put(&repo, "later/model.wasm", &guest("echo_model"));
    support::eventually("later to load", Duration::from_secs(30), || {
        host.model_state("later")
            .is_some_and(|(state, _)| state == "READY")
    });
    assert!(live(&host));
}

#[test]
fn an_elastic_pool_reserves_its_maximum_and_no_resize_passes_the_budget() {
    let (_top, repo) = repository_with_outside();
    put(&repo, "elastic/model.wasm", &guest("echo_model"));
    write(
        &repo,
        "elastic/model.toml",
        "min-instances = 0\nmax-instances = 8\nmemory-limit = \"256MiB\"\n",
    );
    let host = start(
        &repo,
        "explicit",
        &["--memory-budget", "200MiB", "--memory-limit", "128MiB"],
    );
    let (state, reason) = host.model_state("elastic").unwrap();
    assert_eq!(state, "UNAVAILABLE");
    assert!(
        reason.contains("8 instances × 256 MiB") && reason.contains("max-instances"),
        "{reason}"
    );
    // A resize of the fixed pool within its maximum (1 to 2 instances of
    // 128 MiB) that would pass the 200 MiB budget is refused, and the pool
    // keeps its one instance.
    let body = json!({ "parameters": { "config": r#"{"instances": 2}"# } });
    let response = host.admin("/v2/repository/models/digits/load", &body, Some(TOKEN));
    assert_eq!(response.status, 503, "{response:?}");
    let error = response.error();
    assert!(
        error.contains("cannot resize") && error.contains("--memory-budget"),
        "{error}"
    );
    let health = host.get("/health").json();
    assert!(
        health.to_string().contains("\"target\":1"),
        "still 1 instance: {health}"
    );
    assert!(digits_answers(&host));
}

/// A protobuf length-delimited field.
fn field(number: u64, payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    for mut v in [number << 3 | 2, payload.len() as u64] {
        loop {
            let byte = (v & 0x7f) as u8;
            v >>= 7;
            if v == 0 {
                out.push(byte);
                break;
            }
            out.push(byte | 0x80);
        }
    }
    out.extend_from_slice(payload);
    out
}

/// An ONNX model that is a chain of `n` Relu nodes.
fn relu_chain(n: usize) -> Vec<u8> {
    let mut graph = Vec::new();
    for i in 0..n {
        let node = [
            field(1, format!("t{i}").as_bytes()),
            field(2, format!("t{}", i + 1).as_bytes()),
            field(4, b"Relu"),
        ]
        .concat();
        graph.extend(field(1, &node));
    }
    graph.extend(field(2, b"chain"));
    let mut model = vec![0x08, 0x08]; // ir_version 8
    model.extend(field(8, &[field(1, b"").as_slice(), &[0x10, 13]].concat())); // opset 13
    model.extend(field(7, &graph));
    model
}

#[test]
fn a_graph_with_too_many_nodes_is_refused_before_it_is_packed() {
    let (_top, repo) = repository_with_outside();
    let chain = repo.join("chain/model.onnx");
    std::fs::create_dir_all(chain.parent().unwrap()).unwrap();
    std::fs::write(&chain, relu_chain(20_000)).unwrap();
    let host = start(&repo, "explicit", &[]);
    let (state, reason) = host.model_state("chain").unwrap();
    assert_eq!(state, "UNAVAILABLE");
    assert!(
        reason.contains("20000 nodes") && reason.contains("at most 10000"),
        "{reason}"
    );
    assert!(
        !host.log().iter().any(|l| l.contains("packed")),
        "nothing was packed"
    );
    // `wasm-host pack` refuses it the same way, with exit code 3.
    let out = chain.with_extension("wasm");
    let (status, _, stderr) = support::run_command(&[
        "pack".as_ref(),
        chain.as_os_str(),
        "-o".as_ref(),
        out.as_os_str(),
    ]);
    assert_ne!(status.code(), Some(0));
    assert!(stderr.contains("20000 nodes"), "{stderr}");
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
    host.wait_for_log("forged line", Duration::from_secs(5));
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
