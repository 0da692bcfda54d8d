"""The official Triton client (`tritonclient.http`), unchanged, against a real wasm-host.

Every test talks to the one host started by `conftest.py` (2 instances, the digits model). Inference
runs in both of the protocol's encodings: JSON (`binary_data=False`: tensors as JSON lists) and the
binary tensor data extension (`binary_data=True`: a JSON header of `Inference-Header-Content-Length`
bytes, then the raw little-endian tensors). The binary tests check the response's `binary_data_size`
parameters as well as the values, since the client would decode a JSON answer just as happily.
"""

import http.client
import json

import numpy as np
import pytest
import tritonclient.http as httpclient
from tritonclient.utils import InferenceServerException

MODEL = "digits"
OUTPUTS = ("probabilities", "label")
ATOL = 1e-5

MODES = [pytest.param(True, id="binary"), pytest.param(False, id="json")]


def make_input(rows: np.ndarray, binary: bool) -> httpclient.InferInput:
    x = httpclient.InferInput("x", list(rows.shape), "FP32")
    x.set_data_from_numpy(rows, binary_data=binary)
    return x


def requested(names, binary: bool):
    return [httpclient.InferRequestedOutput(n, binary_data=binary) for n in names]


def assert_encoding(result, name: str, binary: bool, itemsize: int):
    """The output came back in the encoding asked for: raw bytes after the header, or JSON data."""
    out = result.get_output(name)
    assert out is not None, f"output {name!r} missing from {result.get_response()}"
    n = int(np.prod(out["shape"]))
    if binary:
        assert "data" not in out, f"{name}: binary output must not carry JSON data"
        assert out.get("parameters", {}).get("binary_data_size") == n * itemsize, out
    else:
        assert "binary_data_size" not in out.get("parameters", {}), out
        assert len(out["data"]) == n


def assert_matches(result, ref, rows: slice):
    probs = result.as_numpy("probabilities")
    labels = result.as_numpy("label")
    n = len(ref["labels"][rows])
    assert probs.dtype == np.float32 and probs.shape == (n, 10)
    assert labels.dtype == np.int64 and labels.shape == (n,)
    np.testing.assert_array_equal(labels, ref["labels"][rows])
    np.testing.assert_allclose(probs, ref["probabilities"][rows], rtol=0, atol=ATOL)


def raw_infer(addr: str, model: str, rows: np.ndarray, datatype: str, binary: bool):
    """The same request without tritonclient (stdlib only), to learn the server's own status and
    error text. In binary mode the body is built by hand: the JSON header, whose length goes in
    `Inference-Header-Content-Length`, then the raw little-endian tensor bytes."""
    tensor = {"name": "x", "shape": list(rows.shape), "datatype": datatype}
    headers = {}
    if binary:
        raw = rows.astype(rows.dtype.newbyteorder("<")).tobytes()
        tensor["parameters"] = {"binary_data_size": len(raw)}
        header = json.dumps({"inputs": [tensor]}).encode()
        body = header + raw
        headers["Inference-Header-Content-Length"] = str(len(header))
    else:
        tensor["data"] = rows.flatten().tolist()
        body = json.dumps({"inputs": [tensor]}).encode()
        headers["Content-Type"] = "application/json"
    conn = http.client.HTTPConnection(addr, timeout=10)
    try:
        conn.request("POST", f"/v2/models/{model}/infer", body, headers)
        resp = conn.getresponse()
        return resp.status, json.loads(resp.read())
    finally:
        conn.close()


# --- health and metadata ---------------------------------------------------------------------


def test_server_live(client):
    assert client.is_server_live()


def test_server_ready(client):
    assert client.is_server_ready()


def test_model_ready(client):
    assert client.is_model_ready(MODEL)
    assert client.is_model_ready(MODEL, model_version="1")
    assert not client.is_model_ready("no-such-model")


def test_server_metadata(client):
    meta = client.get_server_metadata()
    assert meta["name"] == "wasm-host"
    assert meta["version"]
    assert "binary_tensor_data" in meta["extensions"], meta


def test_model_metadata(client):
    meta = client.get_model_metadata(MODEL)
    assert meta["name"] == MODEL
    assert meta["inputs"] == [{"name": "x", "datatype": "FP32", "shape": [-1, 64]}]
    assert meta["outputs"] == [
        {"name": "probabilities", "datatype": "FP32", "shape": [-1, 10]},
        {"name": "label", "datatype": "INT64", "shape": [-1]},
    ]


def test_model_metadata_unknown_model(client):
    with pytest.raises(InferenceServerException) as err:
        client.get_model_metadata("no-such-model")
    assert err.value.status() == "404"
    assert "no-such-model" in err.value.message()


# --- inference ---------------------------------------------------------------------------------


@pytest.mark.parametrize("output_binary", MODES)
@pytest.mark.parametrize("input_binary", MODES)
def test_all_reference_rows(client, reference, input_binary, output_binary):
    """All 200 rows in one request, in every combination of input and output encoding."""
    result = client.infer(
        MODEL,
        [make_input(reference["inputs"], input_binary)],
        outputs=requested(OUTPUTS, output_binary),
    )
    assert [o["name"] for o in result.get_response()["outputs"]] == list(OUTPUTS)
    assert_encoding(result, "probabilities", output_binary, 4)
    assert_encoding(result, "label", output_binary, 8)
    assert_matches(result, reference, slice(None))


@pytest.mark.parametrize("input_binary", MODES)
def test_default_outputs(client, reference, input_binary):
    """`outputs=None`: tritonclient asks for every output with `binary_data_output: true`."""
    result = client.infer(MODEL, [make_input(reference["inputs"], input_binary)], outputs=None)
    response = result.get_response()
    assert response["model_name"] == MODEL
    assert sorted(o["name"] for o in response["outputs"]) == sorted(OUTPUTS)
    assert_encoding(result, "probabilities", True, 4)
    assert_encoding(result, "label", True, 8)
    assert_matches(result, reference, slice(None))


@pytest.mark.parametrize("binary", MODES)
def test_one_row_at_a_time(client, reference, binary):
    for i in range(len(reference["labels"])):
        rows = slice(i, i + 1)
        result = client.infer(
            MODEL,
            [make_input(reference["inputs"][rows], binary)],
            outputs=requested(OUTPUTS, binary),
        )
        assert_matches(result, reference, rows)


@pytest.mark.parametrize("binary", MODES)
def test_request_id_is_echoed(client, reference, binary):
    result = client.infer(
        MODEL,
        [make_input(reference["inputs"][:3], binary)],
        outputs=requested(OUTPUTS, binary),
        request_id="req-42",
    )
    assert result.get_response()["id"] == "req-42"
    assert_matches(result, reference, slice(0, 3))


@pytest.mark.parametrize("binary", MODES)
def test_only_the_requested_output(client, reference, binary):
    result = client.infer(
        MODEL,
        [make_input(reference["inputs"][:5], binary)],
        outputs=requested(["label"], binary),
    )
    assert [o["name"] for o in result.get_response()["outputs"]] == ["label"]
    assert result.as_numpy("probabilities") is None
    assert_encoding(result, "label", binary, 8)
    np.testing.assert_array_equal(result.as_numpy("label"), reference["labels"][:5])


@pytest.mark.parametrize("binary", MODES)
def test_explicit_version(client, reference, binary):
    result = client.infer(
        MODEL,
        [make_input(reference["inputs"][:2], binary)],
        outputs=requested(OUTPUTS, binary),
        model_version="1",
    )
    assert result.get_response()["model_version"] == "1"
    assert_matches(result, reference, slice(0, 2))


@pytest.mark.parametrize("binary", MODES)
def test_concurrent_async_requests(client, reference, binary):
    """More requests in flight than instances: each answer still belongs to its own request."""
    pending = []
    for i in range(0, 200, 10):
        rows = slice(i, i + 10)
        pending.append(
            (
                rows,
                client.async_infer(
                    MODEL,
                    [make_input(reference["inputs"][rows], binary)],
                    outputs=requested(OUTPUTS, binary),
                    request_id=f"batch-{i}",
                ),
            )
        )
    for rows, handle in pending:
        result = handle.get_result()
        assert result.get_response()["id"] == f"batch-{rows.start}"
        assert_matches(result, reference, rows)


# --- errors: the exception carries the server's own status and message -------------------------


@pytest.mark.parametrize("binary", MODES)
def test_unknown_model(client, server_addr, reference, binary):
    with pytest.raises(InferenceServerException) as err:
        client.infer(
            "no-such-model",
            [make_input(reference["inputs"][:1], binary)],
            outputs=requested(OUTPUTS, binary),
        )
    status, body = raw_infer(
        server_addr, "no-such-model", reference["inputs"][:1], "FP32", binary
    )
    assert status == 404
    assert err.value.status() == "404"
    assert err.value.message() == body["error"]
    assert "no-such-model" in err.value.message()


@pytest.mark.parametrize("binary", MODES)
def test_wrong_shape(client, server_addr, binary):
    """[2, 63] against the model's [-1, 64]: rejected before the model sees it."""
    rows = np.zeros((2, 63), dtype=np.float32)
    with pytest.raises(InferenceServerException) as err:
        client.infer(MODEL, [make_input(rows, binary)], outputs=requested(OUTPUTS, binary))
    assert err.value.status() == "400"
    status, body = raw_infer(server_addr, MODEL, rows, "FP32", binary)
    assert status == 400
    assert err.value.message() == body["error"], (err.value.message(), body)
    assert "[2, 63]" in err.value.message()


@pytest.mark.parametrize("binary", MODES)
def test_wrong_datatype(client, server_addr, binary):
    """FP64 where the model takes FP32: rejected before the model sees it."""
    rows = np.zeros((1, 64), dtype=np.float64)
    x = httpclient.InferInput("x", [1, 64], "FP64")
    x.set_data_from_numpy(rows, binary_data=binary)
    with pytest.raises(InferenceServerException) as err:
        client.infer(MODEL, [x], outputs=requested(OUTPUTS, binary))
    assert err.value.status() == "400"
    status, body = raw_infer(server_addr, MODEL, rows, "FP64", binary)
    assert status == 400
    assert err.value.message() == body["error"], (err.value.message(), body)
    assert "FP64" in err.value.message()


def test_server_still_healthy_after_errors(client, reference):
    assert client.is_server_ready()
    result = client.infer(
        MODEL, [make_input(reference["inputs"][:1], False)], outputs=requested(OUTPUTS, False)
    )
    assert_matches(result, reference, slice(0, 1))


@pytest.mark.parametrize("algorithm", ["gzip", "deflate"])
@pytest.mark.parametrize("binary", MODES)
def test_compressed_requests_and_responses(client, reference, binary, algorithm):
    """tritonclient's request_compression_algorithm and response_compression_algorithm: the
    host decodes the body and compresses the answer, and the values are unchanged."""
    rows = slice(0, 50)
    result = client.infer(
        MODEL,
        [make_input(reference["inputs"][rows], binary)],
        outputs=requested(OUTPUTS, binary),
        request_compression_algorithm=algorithm,
        response_compression_algorithm=algorithm,
    )
    assert_matches(result, reference, rows)
