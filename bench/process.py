"""A server a bench script starts, waits for, measures and stops by its process id.

One class for every bench script that starts wasm-host itself (batching, onnx_bench, edge), so
that each starts it the same way and none can leave one running: stderr goes to a log the error
names, readiness is polled within a bound, and `stop` sends TERM and then KILL to that PID only.
"""

import http.client
import os
import signal
import subprocess
import time


class Server:
    def __init__(self, command, log_path, mode="ab"):
        self.log_path = str(log_path)
        self.log = open(log_path, mode)
        self.proc = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                     stderr=self.log)
        self.started = time.monotonic()

    def wait_until(self, ready, timeout, what):
        """Polls `ready()` until it is true (an OSError counts as not yet); stops the server and
        exits the bench, naming the log, if it is not within `timeout` seconds or the server exits."""
        deadline = self.started + timeout
        while time.monotonic() < deadline:
            try:
                if ready():
                    return
            except OSError:
                pass
            if self.proc.poll() is not None:
                break
            time.sleep(0.02)
        self.stop()
        raise SystemExit(f"bench: {what} did not become ready; see {self.log_path}")

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
        self.log.close()


def health_ready(port):
    """A readiness check: wasm-host's `/v2/health/ready` on `port` answers 200."""
    def ready():
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
        conn.request("GET", "/v2/health/ready")
        return conn.getresponse().status == 200
    return ready
