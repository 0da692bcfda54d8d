//! What every integration test needs: the real `wasm-host` binary started on
//! a free loopback port, the real guest components built from this repo, and
//! a small blocking HTTP/1.1 client that can also misbehave on purpose.
#![allow(dead_code)]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, mpsc};
use std::time::Duration;

use serde_json::Value;

pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("host/ sits in the workspace")
        .to_owned()
}

/// A guest component built by `make guests` (crate name with underscores).
fn target_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace_root().join("target"))
}

pub fn guest(name: &str) -> PathBuf {
    let path = target_dir()
        .join("wasm32-wasip2/release")
        .join(format!("{name}.wasm"));
    assert!(
        path.exists(),
        "{} is missing: build the guests first with `make guests` (or run `make test`)",
        path.display()
    );
    path
}

pub fn reference() -> Value {
    let path = workspace_root().join("guest-model/weights/digits_reference.json");
    serde_json::from_slice(&std::fs::read(&path).expect("reference outputs")).unwrap()
}

/// Where tests write files: under the target dir, not /tmp, so that what a
/// run leaves (compiled artifacts, packed ONNX models: hundreds of MB) goes
/// with `cargo clean`, and `make test` clears it before each run.
fn scratch_root() -> PathBuf {
    let root = target_dir().join("test-scratch");
    std::fs::create_dir_all(&root).expect("create target/test-scratch");
    root
}

/// A unique scratch file path for this test process.
pub fn scratch_file(name: &str) -> PathBuf {
    static COUNTER: AtomicUsize = AtomicUsize::new(0);
    let n = COUNTER.fetch_add(1, Ordering::SeqCst);
    scratch_root().join(format!("{}-{n}-{name}", std::process::id()))
}

/// A compile cache for this test process, so tests neither read nor write
/// the user's own cache.
pub fn test_cache_dir() -> PathBuf {
    scratch_root().join(format!("cache-{}", std::process::id()))
}

/// A running `wasm-host` process, killed (by its pid) when dropped.
pub struct Host {
    child: Child,
    pub addr: SocketAddr,
    log: Arc<Mutex<Vec<String>>>,
}

impl Host {
    /// Starts the host on a free port and waits until it is listening.
    pub fn start(model: &Path, args: &[&str]) -> Host {
        Host::start_with_env(model, args, &[])
    }

    pub fn start_with_env(model: &Path, args: &[&str], env: &[(&str, &str)]) -> Host {
        Host::spawn(Some(model), args, env, "127.0.0.1:0")
    }

    /// Starts the host with `--bind bind` (which must use port 0).
    pub fn start_at(model: &Path, bind: &str, args: &[&str]) -> Host {
        Host::spawn(Some(model), args, &[], bind)
    }

    /// Starts the host with only `args` (say, `--model-repository DIR`).
    pub fn start_without_model(args: &[&str], env: &[(&str, &str)]) -> Host {
        Host::spawn(None, args, env, "127.0.0.1:0")
    }

    /// Starts this build's own binary even when the tests drive another one
    /// (`WASM_HOST_BIN`): the reference the other one is compared with.
    pub fn start_native(model: &Path, args: &[&str]) -> Host {
        Host::spawn_from(native_wasm_host(), Some(model), args, &[], "127.0.0.1:0")
    }

    /// Starts the host from a prepared command (say, with resource limits).
    pub fn start_from(command: Command, model: Option<&Path>, args: &[&str]) -> Host {
        Host::spawn_from(command, model, args, &[], "127.0.0.1:0")
    }

    fn spawn(model: Option<&Path>, args: &[&str], env: &[(&str, &str)], bind: &str) -> Host {
        Host::spawn_from(wasm_host(), model, args, env, bind)
    }

    fn spawn_from(
        mut command: Command,
        model: Option<&Path>,
        args: &[&str],
        env: &[(&str, &str)],
        bind: &str,
    ) -> Host {
        let mut child = command
            .envs(env.iter().copied())
            .args(args)
            .args(["--bind", bind])
            .args(model)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start wasm-host");
        let stderr = child.stderr.take().unwrap();
        let log = Arc::new(Mutex::new(Vec::new()));
        let (found, address) = mpsc::channel();
        let lines = Arc::clone(&log);
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if let Some(rest) = line.split("listening on http://").nth(1) {
                    let addr = rest
                        .split_whitespace()
                        .next()
                        .unwrap_or_default()
                        .to_owned();
                    let _ = found.send(addr);
                }
                lines.lock().unwrap().push(line);
            }
        });
        // Bounded, not fixed: the wait ends when the address is logged. The
        // bound is generous because a packed ONNX model (18 MiB of code) took
        // 66 s to compile on a loaded 2-core machine.
        let addr = match address.recv_timeout(Duration::from_secs(180)) {
            Ok(addr) => addr.parse().expect("a socket address in the log"),
            Err(_) => {
                let _ = child.kill();
                let status = child.wait();
                std::thread::sleep(Duration::from_millis(100));
                panic!(
                    "wasm-host did not start listening ({status:?}); its log:\n{}",
                    log.lock().unwrap().join("\n")
                );
            }
        };
        Host { child, addr, log }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The log lines so far.
    pub fn log(&self) -> Vec<String> {
        self.log.lock().unwrap().clone()
    }

    pub fn get(&self, path: &str) -> Response {
        request(self.addr, "GET", path, &[], b"").expect("GET")
    }

    pub fn post_json(&self, path: &str, body: &Value) -> Response {
        let body = serde_json::to_vec(body).unwrap();
        request(
            self.addr,
            "POST",
            path,
            &[("Content-Type", "application/json")],
            &body,
        )
        .expect("POST")
    }

    /// Resident memory of the host process, in bytes.
    pub fn rss(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid())).unwrap();
        let line = status
            .lines()
            .find(|l| l.starts_with("VmRSS:"))
            .expect("VmRSS");
        let kib: u64 = line.split_whitespace().nth(1).unwrap().parse().unwrap();
        kib * 1024
    }

    /// Sends a signal to the host by its pid.
    pub fn signal(&self, signal: &str) {
        let status = Command::new("kill")
            .args([&format!("-{signal}"), &self.pid().to_string()])
            .status()
            .unwrap();
        assert!(status.success(), "kill -{signal} failed");
    }

    /// Waits for the host to exit by itself.
    pub fn wait(&mut self, timeout: Duration) -> Option<ExitStatus> {
        exit_within(&mut self.child, timeout)
    }
}

/// Waits up to `within` for `child` to exit: its status, or `None` if it is
/// still running.
pub fn exit_within(child: &mut Child, within: Duration) -> Option<ExitStatus> {
    let deadline = std::time::Instant::now() + within;
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return Some(status);
        }
        if std::time::Instant::now() >= deadline {
            return None;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

impl Drop for Host {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The binary under test, with the environment every test wants: no
/// colours, its own compile cache, and a secret the sandbox must keep from
/// guests. That is this build's binary, or the one `WASM_HOST_BIN` names,
/// run through the command in `WASM_HOST_RUNNER` if set: `make arm-test`
/// drives the aarch64 build under `qemu-aarch64` this way.
pub fn wasm_host() -> Command {
    match std::env::var_os("WASM_HOST_BIN") {
        Some(bin) => {
            let runner = std::env::var("WASM_HOST_RUNNER").unwrap_or_default();
            let mut words = runner.split_whitespace();
            let mut command = match words.next() {
                Some(program) => {
                    let mut command = Command::new(program);
                    command.args(words).arg(bin);
                    command
                }
                None => Command::new(bin),
            };
            with_test_env(&mut command);
            command
        }
        None => native_wasm_host(),
    }
}

/// This build's own binary, whatever `WASM_HOST_BIN` says.
pub fn native_wasm_host() -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_wasm-host"));
    with_test_env(&mut command);
    command
}

/// The architecture of the binary under test (`WASM_HOST_ARCH` when it is
/// not this build's).
pub fn arch_under_test() -> String {
    std::env::var("WASM_HOST_ARCH").unwrap_or_else(|_| std::env::consts::ARCH.to_owned())
}

fn with_test_env(command: &mut Command) {
    command
        .env("RUST_LOG", "info")
        .env("NO_COLOR", "1")
        .env("SECRET", "the guest must not see this")
        .env("WASM_HOST_CACHE_DIR", test_cache_dir())
        .stdin(Stdio::null());
}

/// Runs `wasm-host` to completion: its exit status, stdout and stderr.
pub fn run_command<S: AsRef<std::ffi::OsStr>>(args: &[S]) -> (ExitStatus, String, String) {
    run_command_with_env(args, &[])
}

/// [`run_command`] with more (or overriding) environment variables.
pub fn run_command_with_env<S: AsRef<std::ffi::OsStr>>(
    args: &[S],
    env: &[(&str, &std::ffi::OsStr)],
) -> (ExitStatus, String, String) {
    let output = wasm_host()
        .envs(env.iter().copied())
        .args(args)
        .output()
        .expect("run wasm-host");
    (
        output.status,
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

#[derive(Debug)]
pub struct Response {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Response {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|err| {
            panic!(
                "response body is not JSON ({err}): {}",
                String::from_utf8_lossy(&self.body)
            )
        })
    }

    pub fn instance(&self) -> u64 {
        self.header("x-instance-id")
            .unwrap_or_else(|| panic!("no x-instance-id header in {self:?}"))
            .parse()
            .unwrap()
    }

    /// The `error` message of a JSON error body.
    pub fn error(&self) -> String {
        self.json()["error"]
            .as_str()
            .unwrap_or_else(|| panic!("no \"error\" in {}", String::from_utf8_lossy(&self.body)))
            .to_owned()
    }
}

/// A keep-alive HTTP/1.1 connection.
pub struct Client {
    stream: BufReader<TcpStream>,
    addr: SocketAddr,
}

impl Client {
    pub fn connect(addr: SocketAddr) -> std::io::Result<Client> {
        let stream = TcpStream::connect(addr)?;
        stream.set_nodelay(true)?;
        stream.set_read_timeout(Some(Duration::from_secs(120)))?;
        Ok(Client {
            stream: BufReader::new(stream),
            addr,
        })
    }

    pub fn send(
        &mut self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: &[u8],
    ) -> std::io::Result<Response> {
        let mut head = format!(
            "{method} {path} HTTP/1.1\r\nHost: {}\r\nContent-Length: {}\r\n",
            self.addr,
            body.len()
        );
        for (name, value) in headers {
            head.push_str(&format!("{name}: {value}\r\n"));
        }
        head.push_str("\r\n");
        let stream = self.stream.get_mut();
        stream.write_all(head.as_bytes())?;
        stream.write_all(body)?;
        read_response(&mut self.stream)
    }

    pub fn set_read_timeout(&self, timeout: Duration) {
        self.stream
            .get_ref()
            .set_read_timeout(Some(timeout))
            .unwrap();
    }

    /// Writes raw bytes, for clients that misbehave on purpose.
    pub fn write_raw(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        self.stream.get_mut().write_all(bytes)
    }

    /// Whether the server has closed the connection (reads EOF or a reset
    /// within `within`).
    pub fn closed_within(&mut self, within: Duration) -> bool {
        self.set_read_timeout(within);
        let mut byte = [0u8; 1];
        match self.stream.read(&mut byte) {
            Ok(0) => true,
            Ok(_) => false,
            Err(err) => !matches!(
                err.kind(),
                std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
            ),
        }
    }

    /// Reads the response to a request written with [`Client::write_raw`]
    /// or [`Client::send_only`].
    pub fn read_response(&mut self) -> std::io::Result<Response> {
        read_response(&mut self.stream)
    }

    /// Writes a request without waiting for its response.
    pub fn send_only(&mut self, method: &str, path: &str, body: &[u8]) {
        let head = format!(
            "{method} {path} HTTP/1.1\r\nHost: {}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
            self.addr,
            body.len()
        );
        let stream = self.stream.get_mut();
        stream.write_all(head.as_bytes()).unwrap();
        stream.write_all(body).unwrap();
    }

    pub fn post_json(&mut self, path: &str, body: &Value) -> std::io::Result<Response> {
        let body = serde_json::to_vec(body).unwrap();
        self.send("POST", path, &[("Content-Type", "application/json")], &body)
    }
}

/// One request on a fresh connection.
pub fn request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> std::io::Result<Response> {
    Client::connect(addr)?.send(method, path, headers, body)
}

fn read_response(stream: &mut BufReader<TcpStream>) -> std::io::Result<Response> {
    let mut status_line = String::new();
    if stream.read_line(&mut status_line)? == 0 {
        return Err(std::io::Error::new(
            std::io::ErrorKind::UnexpectedEof,
            "connection closed before a response",
        ));
    }
    let status: u16 = status_line
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| std::io::Error::other(format!("bad status line {status_line:?}")))?;
    let mut headers = Vec::new();
    loop {
        let mut line = String::new();
        stream.read_line(&mut line)?;
        let line = line.trim_end();
        if line.is_empty() {
            break;
        }
        if let Some((name, value)) = line.split_once(':') {
            headers.push((name.trim().to_owned(), value.trim().to_owned()));
        }
    }
    let length: usize = headers
        .iter()
        .find(|(k, _)| k.eq_ignore_ascii_case("content-length"))
        .map(|(_, v)| v.parse().unwrap_or(0))
        .unwrap_or(0);
    let mut body = vec![0; length];
    stream.read_exact(&mut body)?;
    Ok(Response {
        status,
        headers,
        body,
    })
}

/// An OIP request for the fault model: `[kind, arg]` (see examples/fault-model).
pub fn fault_action(kind: i64, arg: i64) -> Value {
    serde_json::json!({
        "inputs": [{ "name": "action", "shape": [2], "datatype": "INT64", "data": [kind, arg] }]
    })
}

pub const FAULT_INFER: &str = "/v2/models/fault/infer";

/// The `result` of a fault-model response.
pub fn fault_result(response: &Response) -> i64 {
    response.json()["outputs"][0]["data"][0].as_i64().unwrap()
}

/// Waits until `condition` holds, checking every 20 ms, and panics with
/// `what` if it does not within `within`: a test waits for an event, never
/// for a fixed time.
pub fn eventually(what: &str, within: Duration, mut condition: impl FnMut() -> bool) {
    let deadline = std::time::Instant::now() + within;
    while !condition() {
        assert!(
            std::time::Instant::now() < deadline,
            "waited {within:?} for {what}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

impl Host {
    /// Waits until a log line contains `needle`.
    pub fn wait_for_log(&self, needle: &str, within: Duration) {
        eventually(&format!("a log line with {needle:?}"), within, || {
            self.log().iter().any(|line| line.contains(needle))
        });
    }
}

impl Host {
    /// A repository API call: a JSON POST, with `Authorization: Bearer`
    /// when a token is given.
    pub fn admin(&self, path: &str, body: &Value, token: Option<&str>) -> Response {
        let auth = token.map(|t| format!("Bearer {t}"));
        let mut headers = vec![("Content-Type", "application/json")];
        if let Some(auth) = &auth {
            headers.push(("Authorization", auth));
        }
        request(
            self.addr,
            "POST",
            path,
            &headers,
            &serde_json::to_vec(body).unwrap(),
        )
        .unwrap()
    }
}

impl Host {
    /// `/health`, as JSON.
    pub fn health(&self) -> Value {
        self.get("/health").json()
    }

    /// Waits until `check` holds for `/health`; panics with `what` and the
    /// last answer if it does not within `within`.
    pub fn wait_for_health(&self, what: &str, within: Duration, check: impl Fn(&Value) -> bool) {
        let deadline = std::time::Instant::now() + within;
        loop {
            let health = self.health();
            if check(&health) {
                return;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "waited {within:?} for {what}: {health}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The value of the first `/metrics` sample whose line starts with
    /// `series` (the name, and its labels if any).
    pub fn metric(&self, series: &str) -> f64 {
        let text = String::from_utf8(self.get("/metrics").body).unwrap();
        text.lines()
            .find_map(|line| line.strip_prefix(series)?.trim().parse().ok())
            .unwrap_or_else(|| panic!("no {series} in\n{text}"))
    }

    /// Waits until the `/metrics` sample `series` has the value `want`.
    pub fn wait_for_metric(&self, series: &str, want: f64, within: Duration) {
        eventually(&format!("{series} to be {want}"), within, || {
            self.metric(series) == want
        });
    }
}

/// The token the repository tests give the host (`WASM_HOST_ADMIN_TOKEN`).
pub const ADMIN_TOKEN: &str = "s3cret-token";

impl Host {
    /// Starts the host on the model repository `dir` with `--model-control
    /// control` and [`ADMIN_TOKEN`] as its admin token.
    pub fn start_repository(dir: &Path, control: &str, args: &[&str]) -> Host {
        let mut all = vec![
            "--model-repository",
            dir.to_str().unwrap(),
            "--model-control",
            control,
        ];
        all.extend_from_slice(args);
        Host::start_without_model(&all, &[("WASM_HOST_ADMIN_TOKEN", ADMIN_TOKEN)])
    }

    /// The repository index (`POST /v2/repository/index` with [`ADMIN_TOKEN`]).
    pub fn repository_index(&self) -> Vec<Value> {
        let response = self.admin(
            "/v2/repository/index",
            &serde_json::json!({}),
            Some(ADMIN_TOKEN),
        );
        assert_eq!(
            response.status,
            200,
            "{}",
            String::from_utf8_lossy(&response.body)
        );
        response.json().as_array().unwrap().clone()
    }
}

impl Host {
    /// A model's `(state, reason)` in the repository index, if it is listed.
    pub fn model_state(&self, name: &str) -> Option<(String, String)> {
        model_state(&self.repository_index(), name)
    }
}

/// A model's `(state, reason)` in a repository index, if it is listed.
pub fn model_state(index: &[Value], name: &str) -> Option<(String, String)> {
    index.iter().find(|e| e["name"] == name).map(|e| {
        (
            e["state"].as_str().unwrap().to_owned(),
            e["reason"].as_str().unwrap().to_owned(),
        )
    })
}

/// The body of a repository load that uploads `component` as version 1,
/// with a `config` when given (Triton's `file:` parameters, base64).
pub fn upload_body(component: &[u8], config: Option<&str>) -> Value {
    use base64::Engine as _;
    let mut parameters = serde_json::json!({
        "file:1/model.wasm": base64::engine::general_purpose::STANDARD.encode(component),
    });
    if let Some(config) = config {
        parameters["config"] = serde_json::json!(config);
    }
    serde_json::json!({ "parameters": parameters })
}

/// The first reference row of the digits model (64 features).
pub fn digits_row() -> Value {
    reference()["inputs"][0].clone()
}

/// An OIP request for the digits model's label of [`digits_row`].
pub fn digits_infer_body() -> Vec<u8> {
    serde_json::to_vec(&serde_json::json!({
        "inputs": [{ "name": "x", "shape": [1, 64], "datatype": "FP32", "data": digits_row() }],
        "outputs": [{ "name": "label" }]
    }))
    .unwrap()
}

/// Makes a FIFO at `path`.
pub fn mkfifo(path: &Path) {
    let status = Command::new("mkfifo").arg(path).status().expect("mkfifo");
    assert!(status.success());
}

/// Asserts that `got` matches the reference probabilities `want` to 1e-5.
pub fn assert_close(got: &Value, want: &Value, row: usize, endpoint: &str) {
    let (got, want) = (got.as_array().unwrap(), want.as_array().unwrap());
    assert_eq!(got.len(), want.len(), "row {row} via {endpoint}");
    for (g, w) in got.iter().zip(want) {
        let (g, w) = (g.as_f64().unwrap(), w.as_f64().unwrap());
        assert!(
            (g - w).abs() <= 1e-5,
            "row {row} via {endpoint}: probability {g} differs from scikit-learn's {w}"
        );
    }
}
