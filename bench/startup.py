"""Start-up to ready: spawns a server command RUNS times and times each run
from the spawn to the first 200 answer to GET /v2/health/ready, then stops it
by its PID. Prints one JSON line: {"runs": [...ms], "median_ms": ...}.

    python3 bench/startup.py RUNS PORT LOG -- wasm-host --bind 127.0.0.1:PORT model.wasm

The probe connects, sends its request and waits for the answer: wasm-host
binds before it compiles, so a probe that connects early waits in the accept
backlog and is answered as soon as the server serves.
"""

import json
import socket
import statistics
import subprocess
import sys
import time

REQUEST = b"GET /v2/health/ready HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n"


def ready(port):
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
            s.sendall(REQUEST)
            return s.recv(64).startswith(b"HTTP/1.1 200")
    except OSError:
        return False


def main():
    runs, port, log = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
    command = sys.argv[sys.argv.index("--") + 1 :]
    times = []
    with open(log, "ab") as out:
        for _ in range(runs):
            started = time.perf_counter()
            server = subprocess.Popen(command, stdout=out, stderr=out)
            try:
                while not ready(port):
                    if server.poll() is not None:
                        sys.exit(f"startup: {command[0]} exited with {server.returncode}; see {log}")
                    if time.perf_counter() - started > 30:
                        sys.exit(f"startup: {command[0]} not ready after 30 s; see {log}")
                    time.sleep(0.0005)
                times.append((time.perf_counter() - started) * 1000)
            finally:
                server.terminate()
                try:
                    server.wait(10)
                except subprocess.TimeoutExpired:
                    server.kill()
                    server.wait()
    print(json.dumps({"runs": [round(t, 2) for t in times], "median_ms": round(statistics.median(times), 2)}))


if __name__ == "__main__":
    main()
