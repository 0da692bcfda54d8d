"""A server a bench script starts, waits for, measures and stops by its process id.

One class for every bench script that starts a server itself (batching, onnx_bench, edge,
grpc_bench, many_models, startup, instructions), so that each starts it the same way and none can
leave one running: stderr goes to a log the error names, readiness (an answer, or a log line) is
polled within a bound, and `stop` sends TERM and then KILL to that PID only. bench/run.sh has the
same three steps for the servers it starts itself: `start`, `wait_ready`, `stop`.
"""

import http.client
import os
import signal
import subprocess
import time


class Server:
    """`command` started now, its stderr (and stdout, unless `stdout` names a file of its own)
    in `log_path`; `started` is read just before the spawn, so start-up times include it."""

    def __init__(self, command, log_path, mode="ab", env=None, cwd=None, stdout=None):
        self.log_path = str(log_path)
        self.log_file = open(log_path, mode)
        self.out = open(stdout, mode) if stdout else None
        self.started = time.monotonic()
        self.proc = subprocess.Popen(command, stdin=subprocess.DEVNULL,
                                     stdout=self.out or subprocess.DEVNULL, stderr=self.log_file,
                                     env=env, cwd=cwd)

    @property
    def pid(self):
        return self.proc.pid

    def text(self):
        """The log so far."""
        with open(self.log_path, encoding="utf-8", errors="replace") as f:
            return f.read()

    def wait_until(self, ready, timeout, what, interval=0.02):
        """Polls `ready()` every `interval` s until it is true (an OSError or an HTTP error counts
        as not yet); stops the server and exits the bench, naming the log, if it is not within
        `timeout` seconds of the start or the server exits."""
        deadline = self.started + timeout
        while time.monotonic() < deadline:
            try:
                if ready():
                    return
            except (OSError, http.client.HTTPException):
                pass
            if self.proc.poll() is not None:
                break
            time.sleep(interval)
        self.stop()
        raise SystemExit(f"bench: {what} did not become ready; see {self.log_path}")

    def wait_for_log(self, pattern, timeout, what, interval=0.02):
        """Waits as `wait_until` does for the compiled regex `pattern` to match the log; returns
        the match."""
        found = []

        def ready():
            match = pattern.search(self.text())
            if match:
                found.append(match)
            return match is not None
        self.wait_until(ready, timeout, what, interval)
        return found[0]

    def pss_kib(self):
        with open(f"/proc/{self.proc.pid}/smaps_rollup") as f:
            return int(next(line.split()[1] for line in f if line.startswith("Pss:")))

    def cpu_seconds(self):
        with open(f"/proc/{self.proc.pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def stop(self, timeout=15):
        if self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                os.kill(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        self.log_file.close()
        if self.out:
            self.out.close()
        return self.proc.returncode


def health_ready(port):
    """A readiness check: wasm-host's `/v2/health/ready` on `port` answers 200."""
    def ready():
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
        conn.request("GET", "/v2/health/ready")
        return conn.getresponse().status == 200
    return ready
