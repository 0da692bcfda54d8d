//! Limits and backpressure: each flag, and what a client sees when it hits
//! one. Queue and queue timeout, connections, slow headers and bodies, the
//! shared body budget, the response limit, idle keep-alive, and a small
//! address space.

mod support;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use serde_json::json;
use support::{Client, FAULT_INFER, Host, fault_action, guest, request};

fn sleep_for(ms: i64) -> serde_json::Value {
    json!({ "inputs": [ms] })
}

#[test]
fn a_full_queue_answers_503_with_retry_after_and_readiness_stays_200() {
    let host = Host::start(
        &guest("slow_model"),
        &["--instances", "1", "--max-queue", "2"],
    );
    let addr = host.addr;
    // One at a time: each is running or queued before the next is sent.
    let busy: Vec<_> = (0..3)
        .map(|i| {
            let client = std::thread::spawn(move || {
                Client::connect(addr)
                    .unwrap()
                    .post_json("/predict", &sleep_for(1000 + i))
                    .unwrap()
            });
            host.wait_for_health(
                "the request running or queued",
                Duration::from_secs(5),
                |h| h["instances"]["busy"] == 1 && h["queue"]["depth"] == i,
            );
            client
        })
        .collect();
    // One request runs, two wait: the queue is full.
    let health = host.get("/health").json();
    assert_eq!(health["queue"]["depth"], 2, "{health}");
    // Readiness says whether the host can serve, not whether it is busy
    // this instant: overload is answered per request, so a burst never
    // takes a host out of its load balancer.
    assert_eq!(host.get("/v2/health/ready").status, 200);
    assert_eq!(host.get("/v2/models/slow/ready").status, 200);

    let started = Instant::now();
    let rejected = host.post_json("/predict", &sleep_for(10));
    assert_eq!(rejected.status, 503);
    assert!(
        started.elapsed() < Duration::from_millis(500),
        "rejected at once"
    );
    assert_eq!(rejected.header("retry-after"), Some("1"));
    assert!(
        rejected.error().contains("already waiting"),
        "{}",
        rejected.error()
    );

    for request in busy {
        assert_eq!(request.join().unwrap().status, 200);
    }
    assert_eq!(host.get("/v2/health/ready").status, 200);
}

#[test]
fn a_request_that_waits_past_the_queue_timeout_gets_503() {
    let host = Host::start(
        &guest("slow_model"),
        &["--instances", "1", "--queue-timeout", "300ms"],
    );
    let addr = host.addr;
    let long = std::thread::spawn(move || {
        Client::connect(addr)
            .unwrap()
            .post_json("/predict", &sleep_for(2000))
            .unwrap()
    });
    host.wait_for_health("the long request running", Duration::from_secs(5), |h| {
        h["instances"]["busy"] == 1
    });
    let started = Instant::now();
    let waited = host.post_json("/predict", &sleep_for(10));
    let took = started.elapsed();
    assert_eq!(waited.status, 503);
    assert!(
        waited.error().contains("within 300ms"),
        "{}",
        waited.error()
    );
    assert!(
        took >= Duration::from_millis(250) && took < Duration::from_millis(1500),
        "gave up after {took:?}"
    );
    assert_eq!(long.join().unwrap().status, 200);
}

#[test]
fn max_connections_makes_extra_clients_wait_for_a_free_connection() {
    let host = Host::start(
        &guest("slow_model"),
        &[
            "--instances",
            "1",
            "--max-connections",
            "2",
            "--keep-alive",
            "30s",
        ],
    );
    let mut first = Client::connect(host.addr).unwrap();
    let mut second = Client::connect(host.addr).unwrap();
    assert_eq!(first.send("GET", "/health", &[], b"").unwrap().status, 200);
    assert_eq!(second.send("GET", "/health", &[], b"").unwrap().status, 200);

    let mut third = Client::connect(host.addr).unwrap();
    third.set_read_timeout(Duration::from_millis(500));
    let waited = third.send("GET", "/health", &[], b"");
    assert!(waited.is_err(), "a third connection was served: {waited:?}");

    // Its request sits in the kernel backlog until a place frees up; then a
    // new request on it is served.
    drop(first);
    third.set_read_timeout(Duration::from_secs(5));
    let answered = third.send("GET", "/health", &[], b"").unwrap();
    assert_eq!(answered.status, 200);
}

#[test]
fn a_client_that_sends_its_headers_too_slowly_is_cut_off() {
    let host = Host::start(
        &guest("slow_model"),
        &[
            "--instances",
            "1",
            "--header-timeout",
            "500ms",
            "--keep-alive",
            "30s",
        ],
    );
    let mut slow = Client::connect(host.addr).unwrap();
    slow.write_raw(b"GET /health HTTP/1.1\r\nHost: x\r\n")
        .unwrap();
    let started = Instant::now();
    let mut closed = false;
    while started.elapsed() < Duration::from_secs(5) {
        // A byte every 100 ms keeps the socket busy but never ends the headers.
        if slow.write_raw(b"X-Slow: y\r\n").is_err()
            || slow.closed_within(Duration::from_millis(100))
        {
            closed = true;
            break;
        }
    }
    assert!(closed, "a slowloris client held its connection for 5 s");
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "cut off after {:?}",
        started.elapsed()
    );
    assert_eq!(host.get("/health").status, 200);
}

#[test]
fn idle_keep_alive_connections_are_closed_and_busy_ones_kept() {
    let host = Host::start(
        &guest("slow_model"),
        &["--instances", "1", "--keep-alive", "500ms"],
    );
    // A connection in use stays open past the keep-alive time.
    let mut busy = Client::connect(host.addr).unwrap();
    for _ in 0..8 {
        assert_eq!(busy.send("GET", "/health", &[], b"").unwrap().status, 200);
        // A fixed pause on purpose: less than the keep-alive time, 8 times over.
        std::thread::sleep(Duration::from_millis(150));
    }
    // An idle one is closed soon after it.
    let started = Instant::now();
    assert!(
        busy.closed_within(Duration::from_secs(5)),
        "idle connection kept open"
    );
    let idle_for = started.elapsed();
    assert!(
        idle_for >= Duration::from_millis(300) && idle_for < Duration::from_secs(3),
        "{idle_for:?}"
    );

    // A request that outlasts the keep-alive time is not cut off.
    let mut long = Client::connect(host.addr).unwrap();
    let response = long.post_json("/predict", &sleep_for(1200)).unwrap();
    assert_eq!(response.status, 200);
}

/// The host started with its address space capped at `bytes` (`ulimit -v`):
/// big reservations fail as they would with a 39-bit address space.
fn start_with_address_space(bytes: u64, model: Option<&std::path::Path>, args: &[&str]) -> Host {
    use std::os::unix::process::CommandExt;
    let mut command = support::wasm_host();
    // SAFETY: setrlimit is async-signal-safe and touches only the child.
    unsafe {
        command.pre_exec(move || {
            let limit = libc::rlimit {
                rlim_cur: bytes,
                rlim_max: bytes,
            };
            if libc::setrlimit(libc::RLIMIT_AS, &limit) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    Host::start_from(command, model, args)
}

fn assert_digits_served(host: &Host) {
    let reference = support::reference();
    let mut client = Client::connect(host.addr).unwrap();
    for row in 0..20 {
        let response = client
            .post_json("/predict", &json!({ "inputs": [reference["inputs"][row]] }))
            .unwrap();
        assert_eq!(response.status, 200, "{}", response.error());
        assert_eq!(
            response.json()["prediction"],
            reference["predicted_labels"][row]
        );
    }
}

#[test]
fn a_small_address_space_gets_a_pool_sized_to_the_memory_limit_or_on_demand_instances() {
    let args = [
        "--instances",
        "2",
        "--memory-limit",
        "64MiB",
        "--memory-budget",
        "1GiB",
        "--no-cache",
    ];
    // Unlimited: 4 GiB reservations, bounds checks elided.
    let host = Host::start(&guest("guest_model"), &args);
    assert_digits_served(&host);
    let log = host.log().join("\n");
    assert!(log.contains("pooling allocator: 136 slots"), "{log}");
    assert!(log.contains("bounds checks elided"), "{log}");
    drop(host);

    // 16 GiB: the 136 wide slots (2 TiB) do not fit, nor do 136 slots of
    // 64 MiB (35 GiB): the pool shrinks to what fits, and serves.
    let host = start_with_address_space(16 << 30, Some(&guest("guest_model")), &args);
    assert_digits_served(&host);
    let log = host.log().join("\n");
    assert!(
        log.contains("address space too small for 4 GiB reservations"),
        "{log}"
    );
    assert!(
        log.contains("pooling allocator shrunk to what fits"),
        "{log}"
    );
    assert!(log.contains("64 MiB reservations"), "{log}");
    drop(host);

    // There --memory-limit caps every model's: a model.toml asking for more
    // is refused at load, with what to do.
    let repository = support::scratch_file("small-space-repository");
    std::fs::create_dir_all(repository.join("digits")).unwrap();
    std::fs::copy(guest("guest_model"), repository.join("digits/model.wasm")).unwrap();
    std::fs::write(
        repository.join("digits/model.toml"),
        "memory-limit = \"128MiB\"\n",
    )
    .unwrap();
    let mut with_repository = args.to_vec();
    with_repository.extend(["--model-repository", repository.to_str().unwrap()]);
    let host = start_with_address_space(16 << 30, None, &with_repository);
    let log = host.log().join("\n");
    assert!(
        log.contains("memory-limit 128 MiB is more than the 64 MiB this host reserves"),
        "{log}"
    );
    assert_eq!(host.get("/v2/models/digits/ready").status, 503, "{log}");
    drop(host);
    let _ = std::fs::remove_dir_all(repository);

    // 3 GiB: no pool at all; each instance is mapped on demand.
    let host = start_with_address_space(3 << 30, Some(&guest("guest_model")), &args);
    assert_digits_served(&host);
    let log = host.log().join("\n");
    assert!(log.contains("using on-demand instances"), "{log}");
    assert!(log.contains("on-demand allocator"), "{log}");
}

/// Opens a connection that sends a request's headers and `sent` bytes of a
/// `declared`-byte body, then nothing.
fn stalled_body(addr: std::net::SocketAddr, declared: usize, sent: usize) -> TcpStream {
    let mut stream = TcpStream::connect(addr).unwrap();
    let head = format!(
        "POST /v2/models/digits/infer HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n\
         Content-Length: {declared}\r\n\r\n"
    );
    stream.write_all(head.as_bytes()).unwrap();
    stream.write_all(&vec![b' '; sent]).unwrap();
    stream
}

/// What the server sent before closing, within `within`.
fn read_until_closed(stream: &mut TcpStream, within: Duration) -> String {
    stream.set_read_timeout(Some(within)).unwrap();
    let mut got = Vec::new();
    let _ = stream.read_to_end(&mut got);
    String::from_utf8_lossy(&got).into_owned()
}

#[test]
fn a_body_that_stops_arriving_is_cut_off_and_liveness_keeps_answering() {
    let host = Host::start(
        &guest("guest_model"),
        &["--max-connections", "8", "--body-timeout", "1s"],
    );
    // Every connection the host allows, each stuck one byte into its body.
    let mut stalled: Vec<TcpStream> = (0..8).map(|_| stalled_body(host.addr, 1000, 1)).collect();
    // A fixed pause on purpose: the host must have taken the eight before
    // liveness is asked, and with every connection taken no endpoint can
    // say that it has.
    std::thread::sleep(Duration::from_millis(200));
    let asked = Instant::now();
    let live = request(host.addr, "GET", "/v2/health/live", &[], b"").unwrap();
    assert_eq!(live.status, 200);
    assert!(
        asked.elapsed() < Duration::from_secs(5),
        "liveness took {:?} behind stalled bodies",
        asked.elapsed()
    );
    for stream in &mut stalled {
        let answer = read_until_closed(stream, Duration::from_secs(5));
        assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
        assert!(answer.contains("--body-timeout"), "{answer}");
    }
    assert_eq!(host.metric("wasm_host_request_body_timeouts_total "), 8.0);
}

#[test]
fn request_bodies_in_flight_share_one_budget_and_the_rest_get_503() {
    let host = Host::start(
        &guest("guest_model"),
        &[
            "--max-body",
            "2MiB",
            "--body-budget",
            "4MiB",
            "--body-timeout",
            "30s",
        ],
    );
    // Two bodies of 2 MiB, half sent: the whole budget is spoken for.
    let mut holders: Vec<TcpStream> = (0..2)
        .map(|_| stalled_body(host.addr, 2 << 20, 1 << 20))
        .collect();
    host.wait_for_health("both bodies held", Duration::from_secs(5), |h| {
        h["bodies"]["held_bytes"] == 4 << 20
    });
    let body = support::digits_infer_body();
    let refused = request(
        host.addr,
        "POST",
        "/v2/models/digits/infer",
        &[("Content-Type", "application/json")],
        &body,
    )
    .unwrap();
    assert_eq!(
        refused.status,
        503,
        "{}",
        String::from_utf8_lossy(&refused.body)
    );
    assert!(refused.header("retry-after").is_some());
    assert!(
        refused.error().contains("--body-budget"),
        "{}",
        refused.error()
    );
    // The holders leave; their share comes back.
    for holder in &mut holders {
        holder.shutdown(std::net::Shutdown::Both).unwrap();
    }
    host.wait_for_health("the budget given back", Duration::from_secs(5), |h| {
        h["bodies"]["held_bytes"] == 0
    });
    let served = request(
        host.addr,
        "POST",
        "/v2/models/digits/infer",
        &[("Content-Type", "application/json")],
        &body,
    )
    .unwrap();
    assert_eq!(served.status, 200);
}

#[test]
fn a_response_is_held_to_max_response_and_the_host_stays_small() {
    let host = Host::start(
        &guest("fault_model"),
        &["--instances", "2", "--max-response", "16MiB"],
    );
    let addr = host.addr;
    // Two 48 MiB outputs at once, as JSON (hundreds of MB) and as binary.
    let big: Vec<_> = [false, true]
        .into_iter()
        .map(|binary| {
            std::thread::spawn(move || {
                let mut body = fault_action(11, 48);
                body["parameters"] = json!({ "binary_data_output": binary });
                Client::connect(addr)
                    .unwrap()
                    .post_json(FAULT_INFER, &body)
                    .unwrap()
            })
        })
        .collect();
    for response in big {
        let response = response.join().unwrap();
        assert_eq!(response.status, 500);
        assert!(
            response.error().contains("--max-response"),
            "{}",
            response.error()
        );
    }
    // Two instances that held 48 MiB each, and the host: not gigabytes.
    let rss = host.rss();
    assert!(rss < 400 << 20, "host RSS {} MiB", rss >> 20);
    // Under the limit, a binary output comes back whole.
    let mut body = fault_action(11, 8);
    body["outputs"] = json!([{ "name": "blob", "parameters": { "binary_data": true } }]);
    let response = host.post_json(FAULT_INFER, &body);
    assert_eq!(response.status, 200);
    let json_len: usize = response
        .header("inference-header-content-length")
        .unwrap()
        .parse()
        .unwrap();
    assert_eq!(response.body.len() - json_len, 8 << 20);
    assert!(response.body[json_len..].iter().all(|&b| b == 1));
}
