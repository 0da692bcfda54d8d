"""A fleet on this machine: three wasm-hosts behind Debian's nginx with deploy/nginx.conf, under
steady load from client threads that count every failed request.

- A rolling upgrade of the digits model with deploy/rolling-upgrade.sh (the very script users
  run) fails no request, and afterwards every host serves the new version.
- SIGKILL of one host under load fails at most the requests that were in flight at that instant,
  and the two others absorb its load.

Everything is on 127.0.0.1 with ephemeral ports; nginx runs as this user with a temporary prefix
and is stopped by PID, like the hosts.
"""

import contextlib
import http.client
import json
import os
import pwd
import shutil
import signal
import socket
import subprocess
import threading
import time
from pathlib import Path

import pytest

from conftest import MODEL, ROOT, host_process

TOKEN = "fleet-suite-token"
CLIENTS = 4
NGINX_CONF = ROOT / "deploy" / "nginx.conf"
UPGRADE = ROOT / "deploy" / "rolling-upgrade.sh"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def get_json(addr: str, path: str):
    conn = http.client.HTTPConnection(addr, timeout=5)
    try:
        conn.request("GET", path)
        response = conn.getresponse()
        return response.status, json.loads(response.read() or b"null")
    finally:
        conn.close()


@contextlib.contextmanager
def nginx_in_front_of(hosts: list[str], prefix: Path):
    """Debian's nginx with deploy/nginx.conf filled in; yields its address; stopped by PID."""
    nginx = shutil.which("nginx") or "/usr/sbin/nginx"
    if not os.path.exists(nginx):
        pytest.fail("nginx is missing: `make tools` installs it (apt-get install nginx)", pytrace=False)
    prefix.mkdir(parents=True, exist_ok=True)
    (prefix / "upstreams.conf").write_text(
        "".join(f"server {h} max_fails=1 fail_timeout=2s;\n" for h in hosts)
    )
    for attempt in range(5):
        listen = f"127.0.0.1:{free_port()}"
        conf = NGINX_CONF.read_text().replace("@PREFIX@", str(prefix)).replace("@LISTEN@", listen)
        (prefix / "nginx.conf").write_text(conf)
        directives = "daemon off;"
        if os.geteuid() == 0:
            # As root nginx would run its workers as `nobody`, who cannot write the prefix.
            directives += f" user {pwd.getpwuid(0).pw_name};"
        proc = subprocess.Popen(
            [nginx, "-p", str(prefix), "-c", str(prefix / "nginx.conf"), "-g", directives],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and proc.poll() is None:
            try:
                socket.create_connection(listen.split(":"), timeout=0.2).close()
                break
            except OSError:
                time.sleep(0.05)
        if proc.poll() is None:
            break
        err = proc.stderr.read().decode()
        if "Address already in use" not in err or attempt == 4:
            pytest.fail(f"nginx did not start: {err}", pytrace=False)
    try:
        yield listen
    finally:
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGQUIT)  # graceful: finish requests, then exit
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                os.kill(proc.pid, signal.SIGKILL)
                proc.wait()


class Load:
    """CLIENTS threads, each with a keep-alive connection to the balancer, sending digits rows
    and checking each answer's label; every exception or non-200 is a failed request."""

    def __init__(self, addr: str, reference):
        self.addr = addr
        self.rows = [
            (json.dumps({"inputs": [{"name": "x", "shape": [1, 64], "datatype": "FP32",
                                     "data": row.tolist()}]}).encode(), int(label))
            for row, label in zip(reference["inputs"][:50], reference["labels"][:50])
        ]
        self.lock = threading.Lock()
        self.ok = 0
        self.failures: list[str] = []
        self.versions: dict[str, int] = {}
        self.in_request = [False] * CLIENTS
        self.stop = threading.Event()
        self.threads = [threading.Thread(target=self.run, args=(i,), daemon=True) for i in range(CLIENTS)]

    def __enter__(self):
        for t in self.threads:
            t.start()
        return self

    def __exit__(self, *exc):
        self.stop.set()
        for t in self.threads:
            t.join(timeout=30)

    def run(self, me: int):
        conn = http.client.HTTPConnection(self.addr, timeout=30)
        n = me
        while not self.stop.is_set():
            body, label = self.rows[n % len(self.rows)]
            n += 1
            self.in_request[me] = True
            try:
                conn.request("POST", "/v2/models/digits/infer", body, {"Content-Type": "application/json"})
                response = conn.getresponse()
                data = response.read()
                self.in_request[me] = False
                if response.status != 200:
                    raise RuntimeError(f"{response.status} {data[:200]!r}")
                answer = json.loads(data)
                got = next(o["data"][0] for o in answer["outputs"] if o["name"] == "label")
                if got != label:
                    raise RuntimeError(f"label {got}, expected {label}")
                with self.lock:
                    self.ok += 1
                    v = answer["model_version"]
                    self.versions[v] = self.versions.get(v, 0) + 1
            except Exception as err:  # noqa: BLE001: every failure counts, whatever it is
                self.in_request[me] = False
                with self.lock:
                    self.failures.append(f"{type(err).__name__}: {err}")
                conn.close()
                conn = http.client.HTTPConnection(self.addr, timeout=30)
        conn.close()

    def counts(self):
        with self.lock:
            return self.ok, list(self.failures), dict(self.versions)


def served(addr: str) -> int:
    """Inference requests a host has served since it started (its status snapshot)."""
    status, body = get_json(addr, "/status")
    assert status == 200
    return body["server"]["requests"]


@pytest.fixture
def fleet(tmp_path):
    """Three hosts (digits, 2 instances each, model control on, admin token) behind nginx."""
    args = ["--instances", "2", "--model-control", "explicit", str(MODEL)]
    env = {"WASM_HOST_ADMIN_TOKEN": TOKEN}
    with contextlib.ExitStack() as stack:
        hosts = [stack.enter_context(host_process(args, env)) for _ in range(3)]
        addrs = [addr for addr, _ in hosts]
        balancer = stack.enter_context(nginx_in_front_of(addrs, tmp_path / "nginx"))
        yield balancer, hosts


def test_a_rolling_upgrade_under_load_fails_no_request(fleet, reference):
    balancer, hosts = fleet
    addrs = [addr for addr, _ in hosts]
    with Load(balancer, reference) as load:
        time.sleep(2)
        before = [served(a) for a in addrs]
        assert all(n > 0 for n in before), f"every host takes traffic: {before}"
        started = time.monotonic()
        upgrade = subprocess.run(
            ["bash", str(UPGRADE), "--refuse", "--token", TOKEN, "--file", str(MODEL),
             "--version", "2", "--quiet", "1", "--settle", "5", "digits", *addrs],
            capture_output=True, text=True, timeout=120,
        )
        took = time.monotonic() - started
        time.sleep(1)
        ok, failures, versions = load.counts()
    print(upgrade.stderr)
    print(f"rolling upgrade of 3 hosts in {took:.1f} s under load: {ok} requests answered, "
          f"{len(failures)} failed; versions seen {versions}")
    assert upgrade.returncode == 0, upgrade.stderr
    assert failures == [], failures[:10]
    assert ok > 500, "the load was steady"
    for addr in addrs:
        status, meta = get_json(addr, "/v2/models/digits")
        assert (status, meta["versions"]) == (200, ["2"]), meta
        assert get_json(addr, "/status")[1]["server"]["draining"] is False
    assert versions.get("2", 0) > 0 and versions.get("1", 0) > 0


def test_a_host_killed_under_load_costs_at_most_its_requests_in_flight(fleet, reference):
    balancer, hosts = fleet
    addrs = [addr for addr, _ in hosts]
    victim_addr, victim = hosts[1]
    others = [a for a in addrs if a != victim_addr]
    with Load(balancer, reference) as load:
        time.sleep(2)
        assert served(victim_addr) > 0, "the victim takes traffic before the kill"
        # In flight at the instant of the kill: the host's own count just before, and the
        # clients' (each has at most one request out, so this bounds the victim's share).
        victim_in_flight = get_json(victim_addr, "/status")[1]["server"]["in_flight"]
        os.kill(victim.pid, signal.SIGKILL)
        clients_in_flight = sum(load.in_request)
        victim.wait(timeout=10)
        ok_at_kill, _, _ = load.counts()
        others_at_kill = [served(a) for a in others]
        time.sleep(3)
        ok, failures, _ = load.counts()
        others_after = [served(a) for a in others]
    print(f"SIGKILL of one of 3 hosts: {len(failures)} failed requests (host in flight just "
          f"before: {victim_in_flight}; client requests out at the kill: {clients_in_flight}); "
          f"{ok - ok_at_kill} answered in the 3 s after, by the other hosts: "
          f"{[b - a for a, b in zip(others_at_kill, others_after)]}")
    assert len(failures) <= clients_in_flight, failures
    absorbed = [b - a for a, b in zip(others_at_kill, others_after)]
    assert all(n > 100 for n in absorbed), f"both remaining hosts take the load: {absorbed}"
    assert ok - ok_at_kill > 300, "the fleet keeps serving"
