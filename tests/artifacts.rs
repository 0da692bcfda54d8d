//! What the host loads, and how it treats the files it loads from: model
//! files (read safely, whatever sits at the path), precompiled artifacts
//! (native code: only when the operator opts in), the compile cache (only
//! entries this user wrote, for this model, intact), and model metadata
//! (names that are safe in URLs and logs).
//!
//! And the commands that work on model files without serving them:
//! `inspect`, `compile` and `plan`.

mod support;

use std::ffi::OsStr;
use std::io::Read;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use serde_json::json;
use support::{Host, guest, run_command, run_command_with_env, scratch_file, test_cache_dir};

/// The echo model answers `/predict` with its name; any other model does not.
fn assert_serves(host: &Host, model: &str) {
    let response = host.post_json("/predict", &json!({ "inputs": [[0.5, 0.25]] }));
    assert_eq!(
        response.status,
        200,
        "{}",
        String::from_utf8_lossy(&response.body)
    );
    assert_eq!(response.json()["model"], model);
}

/// `wasm-host compile` of a guest into a scratch artifact.
fn compile(name: &str) -> PathBuf {
    let artifact = scratch_file(&format!("{name}.cwasm"));
    let model = guest(name);
    let (status, stdout, stderr) = run_command(&[
        "compile".as_ref(),
        model.as_os_str(),
        "-o".as_ref(),
        artifact.as_os_str(),
    ]);
    assert!(status.success(), "{stdout}{stderr}");
    artifact
}

/// A cache directory of this test's own, not there yet.
fn fresh_cache() -> PathBuf {
    let dir = scratch_file("cache").join("wasm-host");
    let _ = std::fs::remove_dir_all(&dir);
    dir
}

fn entries(dir: &Path) -> Vec<PathBuf> {
    let mut found: Vec<PathBuf> = std::fs::read_dir(dir)
        .map(|list| list.map(|e| e.unwrap().path()).collect())
        .unwrap_or_default();
    found.retain(|p| p.extension() == Some(OsStr::new("cwasm")));
    found.sort();
    found
}

fn start_cached(model: &Path, cache: &Path) -> Host {
    Host::start(
        model,
        &["--instances", "1", "--cache-dir", cache.to_str().unwrap()],
    )
}

fn log_of(host: Host) -> String {
    host.log().join("\n")
}

/// Runs `wasm-host args...` and checks it exits with `code` and one error
/// line mentioning each needle; kills it and fails if it runs past 30 s.
fn assert_fails(args: Vec<std::ffi::OsString>, code: i32, needles: &[&str]) -> String {
    let mut child = support::wasm_host()
        .args(&args)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let Some(status) = support::exit_within(&mut child, Duration::from_secs(30)) else {
        let _ = child.kill();
        let _ = child.wait();
        panic!("{args:?} did not exit");
    };
    let mut stderr = String::new();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut stderr)
        .unwrap();
    assert_eq!(status.code(), Some(code), "{args:?}: {stderr}");
    let errors: Vec<&str> = stderr.lines().filter(|l| l.starts_with("error:")).collect();
    assert_eq!(errors.len(), 1, "{args:?}: one error line in {stderr}");
    for needle in needles {
        assert!(
            errors[0].contains(needle),
            "{args:?}: {needle:?} not in {}",
            errors[0]
        );
    }
    stderr
}

fn serve_args(model: &Path, extra: &[&str]) -> Vec<std::ffi::OsString> {
    let mut args: Vec<std::ffi::OsString> = vec!["--bind".into(), "127.0.0.1:0".into()];
    args.extend(extra.iter().map(Into::into));
    args.push(model.into());
    args
}

#[test]
fn an_elf_model_file_is_refused_without_allow_precompiled() {
    let artifact = compile("guest_model");
    let needles = ["precompiled artifact", "native code", "--allow-precompiled"];
    assert_fails(serve_args(&artifact, &[]), 3, &needles);
    for command in ["inspect", "plan"] {
        let mut args: Vec<std::ffi::OsString> = vec![command.into(), artifact.clone().into()];
        if command == "plan" {
            args.extend(["--rate".into(), "1".into()]);
        }
        assert_fails(args, 3, &needles);
    }

    // The operator's opt-in, as a flag or in the environment.
    let host = Host::start(&artifact, &["--instances", "1", "--allow-precompiled"]);
    assert!(log_of(host).contains("loaded precompiled in"));
    let (status, stdout, stderr) = run_command_with_env(
        &["inspect".as_ref(), artifact.as_os_str()],
        &[("WASM_HOST_ALLOW_PRECOMPILED", OsStr::new("1"))],
    );
    assert!(status.success(), "{stdout}{stderr}");
    assert!(stdout.contains("loaded precompiled"), "{stdout}");
    let _ = std::fs::remove_file(artifact);
}

#[test]
fn a_reload_to_an_elf_model_file_is_refused_without_allow_precompiled() {
    let artifact = compile("guest_model");
    let path = scratch_file("model.wasm");
    std::fs::copy(guest("echo_model"), &path).unwrap();
    let host = Host::start(&path, &["--instances", "1"]);
    assert_serves(&host, "echo");
    std::fs::rename(&artifact, &path).unwrap();
    host.signal("HUP");
    host.wait_for_log("reload failed", Duration::from_secs(30));
    let log = host.log().join("\n");
    assert!(log.contains("--allow-precompiled"), "{log}");
    assert_serves(&host, "echo");
    let _ = std::fs::remove_file(path);
}

#[test]
fn a_cache_entry_renamed_from_another_model_is_refused_and_replaced() {
    let cache = fresh_cache();
    let echo = guest("echo_model");
    assert!(log_of(start_cached(&echo, &cache)).contains("compiled in"));
    let echo_entry = entries(&cache).pop().expect("an entry for echo");
    drop(start_cached(&guest("fault_model"), &cache));
    let fault_entry = entries(&cache)
        .into_iter()
        .find(|e| *e != echo_entry)
        .expect("an entry for fault");
    std::fs::rename(&fault_entry, &echo_entry).unwrap();

    let host = start_cached(&echo, &cache);
    assert_serves(&host, "echo");
    let log = log_of(host);
    assert!(log.contains("renamed or swapped"), "{log}");
    assert!(log.contains("compiled in"), "{log}");
    // The refused entry was overwritten with a good one.
    let host = start_cached(&echo, &cache);
    assert_serves(&host, "echo");
    assert!(log_of(host).contains("loaded from the compile cache"));
    let _ = std::fs::remove_dir_all(cache);
}

#[test]
fn a_modified_cache_entry_is_refused_and_replaced() {
    let cache = fresh_cache();
    let echo = guest("echo_model");
    drop(start_cached(&echo, &cache));
    let entry = entries(&cache).pop().unwrap();
    let mut bytes = std::fs::read(&entry).unwrap();
    // Patch a byte of the artifact, as injected code would.
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0xff;
    std::fs::write(&entry, &bytes).unwrap();

    let host = start_cached(&echo, &cache);
    assert_serves(&host, "echo");
    let log = log_of(host);
    assert!(log.contains("checksum does not match"), "{log}");
    assert!(log.contains("compiled in"), "{log}");
    assert_ne!(
        std::fs::read(&entry).unwrap(),
        bytes,
        "the entry was replaced"
    );
    let _ = std::fs::remove_dir_all(cache);
}

#[test]
fn the_cache_never_follows_a_symlink() {
    let cache = fresh_cache();
    let echo = guest("echo_model");
    drop(start_cached(&echo, &cache));
    let entry = entries(&cache).pop().unwrap();
    // Another good entry, planted through a symlink under this key's name,
    // and a victim file the host must not write through it.
    let planted = scratch_file("planted.cwasm");
    std::fs::rename(&entry, &planted).unwrap();
    std::os::unix::fs::symlink(&planted, &entry).unwrap();
    let planted_bytes = std::fs::read(&planted).unwrap();

    let host = start_cached(&echo, &cache);
    assert_serves(&host, "echo");
    let log = log_of(host);
    assert!(log.contains("symlink"), "{log}");
    assert!(log.contains("compiled in"), "{log}");
    assert_eq!(
        std::fs::read(&planted).unwrap(),
        planted_bytes,
        "written through the link"
    );
    let meta = std::fs::symlink_metadata(&entry).unwrap();
    assert!(
        meta.file_type().is_file(),
        "the symlink was replaced by a file"
    );
    // The cache directory is itself never a symlink.
    let linked = scratch_file("linked-cache");
    std::os::unix::fs::symlink(&cache, &linked).unwrap();
    let host = start_cached(&echo, &linked);
    let log = log_of(host);
    assert!(log.contains("not using the compile cache"), "{log}");
    assert!(log.contains("compiled in"), "{log}");
    for path in [&planted, &linked] {
        let _ = std::fs::remove_file(path);
    }
    let _ = std::fs::remove_dir_all(cache);
}

#[test]
fn the_cache_is_private_and_one_others_can_write_is_not_used() {
    let cache = fresh_cache();
    let echo = guest("echo_model");
    drop(start_cached(&echo, &cache));
    let mode = |p: &Path| std::fs::metadata(p).unwrap().mode() & 0o777;
    assert_eq!(mode(&cache), 0o700, "the cache directory is created 0700");
    let entry = entries(&cache).pop().unwrap();
    assert_eq!(mode(&entry), 0o600, "an entry is created 0600");

    // A directory others may write: one warning, then compile, cache nothing.
    std::fs::set_permissions(&cache, std::fs::Permissions::from_mode(0o777)).unwrap();
    std::fs::remove_file(&entry).unwrap();
    let host = start_cached(&echo, &cache);
    assert_serves(&host, "echo");
    let log = log_of(host);
    let warnings: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("compile cache"))
        .collect();
    assert_eq!(warnings.len(), 1, "{log}");
    assert!(warnings[0].contains("writable by other users"), "{log}");
    assert!(log.contains("compiled in"), "{log}");
    assert!(
        entries(&cache).is_empty(),
        "wrote into an untrusted directory"
    );

    // An entry others may write: refused, recompiled, replaced privately.
    std::fs::set_permissions(&cache, std::fs::Permissions::from_mode(0o700)).unwrap();
    drop(start_cached(&echo, &cache));
    std::fs::set_permissions(&entry, std::fs::Permissions::from_mode(0o666)).unwrap();
    let log = log_of(start_cached(&echo, &cache));
    assert!(log.contains("writable by other users"), "{log}");
    assert!(log.contains("compiled in"), "{log}");
    assert_eq!(mode(&entry), 0o600);

    // A directory another user owns (only root can arrange that here).
    let probe = scratch_file("probe");
    std::fs::write(&probe, b"").unwrap();
    let me = std::fs::metadata(&probe).unwrap().uid();
    let _ = std::fs::remove_file(probe);
    if me == 0 {
        std::os::unix::fs::chown(&cache, Some(65534), None).unwrap();
        let log = log_of(start_cached(&echo, &cache));
        assert!(log.contains("owned by uid 65534"), "{log}");
        assert!(log.contains("compiled in"), "{log}");
    }
    let _ = std::fs::remove_dir_all(cache);
}

#[test]
fn truncating_a_cache_entry_or_artifact_under_a_serving_host_does_not_crash_it() {
    let cache = fresh_cache();
    let echo = guest("echo_model");
    drop(start_cached(&echo, &cache));
    let mut host = start_cached(&echo, &cache);
    assert!(
        host.log()
            .join("\n")
            .contains("loaded from the compile cache")
    );
    let entry = entries(&cache).pop().unwrap();
    std::fs::File::options()
        .write(true)
        .open(&entry)
        .unwrap()
        .set_len(0)
        .unwrap();
    for _ in 0..20 {
        assert_serves(&host, "echo");
    }
    host.signal("TTIN");
    host.signal("HUP");
    host.wait_for_log("reloaded", Duration::from_secs(30));
    for _ in 0..20 {
        assert_serves(&host, "echo");
    }
    assert!(
        host.wait(Duration::from_millis(100)).is_none(),
        "the host died"
    );

    let artifact = compile("echo_model");
    let mut host = Host::start(&artifact, &["--instances", "1", "--allow-precompiled"]);
    std::fs::File::options()
        .write(true)
        .open(&artifact)
        .unwrap()
        .set_len(16)
        .unwrap();
    for _ in 0..20 {
        assert_serves(&host, "echo");
    }
    host.signal("TTIN");
    host.signal("HUP");
    host.wait_for_log("reload failed", Duration::from_secs(30));
    assert_serves(&host, "echo");
    assert!(
        host.wait(Duration::from_millis(100)).is_none(),
        "the host died"
    );
    let _ = std::fs::remove_file(artifact);
    let _ = std::fs::remove_dir_all(cache);
}

#[test]
fn a_model_path_that_is_not_a_regular_file_is_refused_at_start() {
    let fifo = scratch_file("model.fifo");
    support::mkfifo(&fifo);
    assert_fails(serve_args(&fifo, &[]), 3, &["not a regular file"]);
    // A folder is no longer refused here: it stands for the one model file
    // in it, or a repository (tests/repository.rs, the folder tests).
    // Larger than any model: refused before a byte is read (sparse, so cheap).
    let huge = scratch_file("huge.wasm");
    let file = std::fs::File::create(&huge).unwrap();
    file.set_len((1 << 30) + 1).unwrap();
    assert_fails(serve_args(&huge, &[]), 3, &["larger than the 1024 MiB"]);
    for path in [fifo, huge] {
        let _ = std::fs::remove_file(path);
    }
}

#[test]
fn a_model_path_may_be_a_symlink_to_the_model() {
    let link = scratch_file("current.wasm");
    std::os::unix::fs::symlink(guest("echo_model"), &link).unwrap();
    let host = Host::start(&link, &["--instances", "1"]);
    assert_serves(&host, "echo");
    let _ = std::fs::remove_file(link);
}

#[test]
fn a_reload_from_a_fifo_fails_alone_and_the_host_serves_and_stops() {
    let path = scratch_file("model.wasm");
    std::fs::copy(guest("echo_model"), &path).unwrap();
    let mut host = Host::start(&path, &["--instances", "1"]);
    std::fs::remove_file(&path).unwrap();
    support::mkfifo(&path);
    host.signal("HUP");
    host.wait_for_log("reload failed", Duration::from_secs(30));
    let log = host.log().join("\n");
    assert!(log.contains("not a regular file"), "{log}");
    for _ in 0..10 {
        assert_serves(&host, "echo");
    }
    assert_eq!(host.get("/health").status, 200);
    host.signal("TERM");
    let status = host
        .wait(Duration::from_secs(5))
        .expect("TERM ends the host promptly");
    assert_eq!(status.code(), Some(0));
    let _ = std::fs::remove_file(path);
}

#[test]
fn a_model_name_with_a_control_character_is_refused_at_load() {
    let stderr = assert_fails(
        serve_args(&guest("badname_model"), &[]),
        3,
        &["model name", "control character", "U+000A"],
    );
    assert!(
        !stderr.lines().any(|l| l.starts_with("INFO forged")),
        "the name forged a log line: {stderr}"
    );
}

#[test]
fn a_model_built_against_contract_0_1_is_refused_at_load_with_how_to_rebuild_it() {
    let old = guest("contract_0_1_model");
    assert_fails(
        serve_args(&old, &[]),
        3,
        &[
            "was built against the model contract wasm-host:model@0.1.0; \
             this wasm-host speaks 0.2.0: rebuild it with this repository's guest SDK \
             (guest-sdk/), or re-pack an ONNX model with 'wasm-host pack'",
        ],
    );
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
    // One entry: the artifact and its check file.
    let mut names: Vec<String> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    assert_eq!(names.len(), 2, "{names:?}");
    assert!(
        names[0].ends_with(".check") && names[1].ends_with(".cwasm"),
        "{names:?}"
    );

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
