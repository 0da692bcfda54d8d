"""More models than memory over gRPC (`--load on-demand`): tritonclient's gRPC client reads
metadata of a model that is not resident without loading it, its first ModelInfer loads it, and a
budget that holds one model evicts the least recently used one, which the next call loads back.
(tests/on_demand.rs checks the same over HTTP, at scale.)
"""

import shutil
import urllib.request

import numpy as np
import pytest
import tritonclient.grpc as grpcclient

from conftest import ADMIN_TOKEN, MODEL, running_host

LIMIT_MIB = 64
MODELS = ["m0", "m1", "m2"]


def metric(addr, name):
    text = urllib.request.urlopen(f"http://{addr}/metrics", timeout=10).read().decode()
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
               if line.startswith(name + "{") or line.startswith(name + " "))


@pytest.fixture(scope="module")
def host(tmp_path_factory):
    repo = tmp_path_factory.mktemp("on-demand")
    for name in MODELS:
        (repo / name).mkdir()
        shutil.copy(MODEL, repo / name / "model.wasm")
    args = ["--model-repository", str(repo), "--model-control", "explicit", "--load", "on-demand",
            "--instances", "1", "--memory-limit", f"{LIMIT_MIB}MiB",
            "--memory-budget", f"{LIMIT_MIB + LIMIT_MIB // 2}MiB"]
    with running_host(args, {"WASM_HOST_ADMIN_TOKEN": ADMIN_TOKEN}, grpc=True) as addrs:
        yield addrs


def labels(client, model, reference, rows=4):
    x = np.asarray(reference["inputs"][:rows], dtype=np.float32)
    inp = grpcclient.InferInput("x", list(x.shape), "FP32")
    inp.set_data_from_numpy(x)
    return client.infer(model, [inp]).as_numpy("label")


def test_grpc_calls_load_on_demand_and_evict_the_least_recently_used(host, reference):
    addr, grpc_addr = host
    client = grpcclient.InferenceServerClient(grpc_addr)
    # Metadata and readiness answer for a registered model without loading it.
    assert client.get_model_metadata("m0", as_json=True)["inputs"][0]["name"] == "x"
    assert client.is_model_ready("m0")
    assert metric(addr, "wasm_host_model_loads_total") == 0
    expected = reference["labels"][:4]
    np.testing.assert_array_equal(labels(client, "m0", reference), expected)
    assert metric(addr, "wasm_host_model_loads_total") == 1
    # The budget holds one model: m1's first call evicts m0, idle and least recently used.
    np.testing.assert_array_equal(labels(client, "m1", reference), expected)
    assert metric(addr, "wasm_host_model_evictions_total") == 1
    # m0 comes back at its next call, and m1 goes.
    np.testing.assert_array_equal(labels(client, "m0", reference), expected)
    assert metric(addr, "wasm_host_model_loads_total") == 3
    assert metric(addr, "wasm_host_model_evictions_total") == 2


def test_a_grpc_call_to_an_unknown_model_is_not_found(host, reference):
    client = grpcclient.InferenceServerClient(host[1])
    with pytest.raises(grpcclient.InferenceServerException) as err:
        labels(client, "nope", reference)
    assert err.value.status() == "StatusCode.NOT_FOUND"
