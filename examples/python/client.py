"""Call wasm-host from Python: the official Triton client, and plain HTTP.

wasm-host speaks the Open Inference Protocol (KServe v2 / Triton HTTP), so NVIDIA's own client
library works unchanged, including its binary tensor encoding. Start a server, then run this:

    make serve                                  # in one shell: 127.0.0.1:8000, 8 instances
    pip install 'tritonclient[http]' numpy      # in another (a virtualenv is a good idea)
    python examples/python/client.py            # or: --url http://HOST:PORT

It prints the server and model metadata, classifies one 8x8 image of a handwritten zero with
`tritonclient.http` (tensors sent and received as raw bytes), then sends the same image to the
simple `/predict` route with the standard library alone, to show the `x-instance-id` header that
names the sandboxed instance which answered (tritonclient does not expose response headers).
"""

import argparse
import http.client
import json
import sys
from urllib.parse import urlsplit

import numpy as np
import tritonclient.http as triton
from tritonclient.utils import InferenceServerException

MODEL = "digits"

# One 8x8 image of a "0" from the scikit-learn digits set, pixels scaled to 0..1, row by row.
ZERO = [
    0, 0, 0.3125, 0.8125, 0.5625, 0.0625, 0, 0,
    0, 0, 0.8125, 0.9375, 0.625, 0.9375, 0.3125, 0,
    0, 0.1875, 1, 0.3125, 0, 0.75, 0.5, 0,
    0, 0.25, 0.75, 0, 0, 0.5, 0.5, 0,
    0, 0.3125, 0.5, 0, 0, 0.5625, 0.5, 0,
    0, 0.25, 0.6875, 0, 0.0625, 0.75, 0.4375, 0,
    0, 0.125, 0.875, 0.3125, 0.625, 0.75, 0, 0,
    0, 0, 0.375, 0.8125, 0.625, 0, 0, 0,
]  # fmt: skip


def with_tritonclient(host_port: str) -> None:
    client = triton.InferenceServerClient(url=host_port)  # "host:port", no scheme

    server = client.get_server_metadata()
    print(f"server: {server['name']} {server['version']}, extensions: {server['extensions']}")
    print(f"live: {client.is_server_live()}, ready: {client.is_server_ready()}")

    model = client.get_model_metadata(MODEL)
    for kind in ("inputs", "outputs"):
        for t in model[kind]:
            print(f"  {kind[:-1]:6} {t['name']:13} {t['datatype']:5} {t['shape']}")

    # A batch of one: shape [1, 64]. binary_data=True sends the tensor as raw little-endian bytes
    # after a small JSON header, instead of as a JSON list of numbers.
    image = np.asarray([ZERO], dtype=np.float32)
    x = triton.InferInput("x", list(image.shape), "FP32")
    x.set_data_from_numpy(image, binary_data=True)
    outputs = [
        triton.InferRequestedOutput("label", binary_data=True),
        triton.InferRequestedOutput("probabilities", binary_data=True),
    ]
    result = client.infer(MODEL, [x], outputs=outputs, request_id="example-1")

    label = result.as_numpy("label")  # int64, shape [1]
    probabilities = result.as_numpy("probabilities")  # float32, shape [1, 10]
    print(f"request {result.get_response()['id']}: label {label[0]}")
    for digit, p in enumerate(probabilities[0]):
        print(f"  {digit}: {p:.2e} {'#' * round(p * 40)}".rstrip())

    # Errors arrive as InferenceServerException carrying the server's status and message.
    try:
        client.infer("no-such-model", [x])
    except InferenceServerException as e:
        print(f"unknown model -> HTTP {e.status()}: {e.message()}")
    client.close()


def with_stdlib(host_port: str) -> None:
    """The simple route, no client library: JSON in, JSON out, and the response headers."""
    conn = http.client.HTTPConnection(host_port, timeout=10)
    body = json.dumps({"inputs": [ZERO]})
    conn.request("POST", "/predict", body, {"Content-Type": "application/json"})
    resp = conn.getresponse()
    answer = json.loads(resp.read())
    conn.close()
    if resp.status != 200:
        sys.exit(f"/predict -> HTTP {resp.status}: {answer.get('error')}")
    print(
        f"/predict -> HTTP {resp.status}, prediction {answer['prediction']}, "
        f"served by instance {resp.getheader('x-instance-id')} (x-instance-id)"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", default="http://127.0.0.1:8000", help="the wasm-host to call")
    url = parser.parse_args().url
    host_port = urlsplit(url if "://" in url else "http://" + url).netloc  # "host:port"
    try:
        with_tritonclient(host_port)
        with_stdlib(host_port)
    except ConnectionRefusedError:
        sys.exit(f"nothing listens on {host_port}; start the server with `make serve`")


if __name__ == "__main__":
    main()
