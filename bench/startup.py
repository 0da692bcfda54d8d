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
import sys
import time

import process

REQUEST = b"GET /v2/health/ready HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n"


def ready(port):
    def answered():
        with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
            s.sendall(REQUEST)
            return s.recv(64).startswith(b"HTTP/1.1 200")
    return answered


def main():
    runs, port, log = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
    command = sys.argv[sys.argv.index("--") + 1 :]
    times = []
    for _ in range(runs):
        server = process.Server(command, log, stdout=log)
        try:
            server.wait_until(ready(port), 30, command[0], interval=0.0005)
            times.append((time.monotonic() - server.started) * 1000)
        finally:
            server.stop(timeout=10)
    print(json.dumps({"runs": [round(t, 2) for t in times], "median_ms": round(statistics.median(times), 2)}))


if __name__ == "__main__":
    main()
