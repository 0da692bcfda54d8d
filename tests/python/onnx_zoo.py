"""The ONNX zoo: every exported model the suite checks against onnxruntime, served as one.

Members are the scikit-learn, XGBoost and LightGBM exports of `examples/onnx/make_sklearn.py`
(their inputs and onnxruntime's answers recorded by the script) and the whole networks of
`examples/onnx/make_networks.py` (ResNet, Inception, a BERT-style encoder; at `--size small` in
CI, onnxruntime run here on seeded inputs). They are merged side by side into one model,
`zoo` (onnx_graphs.py), so the host packs and compiles the ONNX runner once for all of them;
one request carries every member's inputs, and each member's outputs come back under its
prefix (`MEMBER__output`).
"""

from __future__ import annotations

import dataclasses
import importlib.util
import os
import subprocess
from pathlib import Path

import numpy as np

from onnx_graphs import side_by_side

ROOT = Path(__file__).resolve().parents[2]
HOST = ROOT / "target" / "release" / "wasm-host"
EXAMPLES = ROOT / "examples" / "onnx"
DATATYPES = {np.dtype(np.float32): "FP32", np.dtype(np.float64): "FP64",
             np.dtype(np.int64): "INT64"}


def script(name: str):
    """One of examples/onnx's scripts, imported as a module."""
    spec = importlib.util.spec_from_file_location(name, EXAMPLES / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


SKLEARN = script("make_sklearn")
NETWORKS = script("make_networks")


@dataclasses.dataclass
class Member:
    """One model of the zoo: its inputs and onnxruntime's outputs, by tensor name."""

    name: str
    kind: str  # "sklearn" or "network"
    inputs: dict
    expected: dict


def build(out: Path, network_size: str = "small") -> tuple[Path, dict[str, Member]]:
    """Export every member under OUT, record onnxruntime's answers, and write the merged model
    to OUT/repository/zoo/model.onnx. Returns (the repository, the members by name)."""
    import onnx
    import onnxruntime as ort

    models, members = {}, {}
    SKLEARN.main(["make_sklearn.py", str(out / "exports")])
    for name in SKLEARN.MODELS:
        reference = np.load(out / "exports" / f"{name}.npz")
        split = {"input": {}, "output": {}}
        for key in reference.files:
            kind, tensor = key.split(":", 1)
            split[kind][tensor] = reference[key]
        members[name] = Member(name, "sklearn", split["input"], split["output"])
        models[name] = onnx.load(out / "exports" / name / "model.onnx")

    for name in NETWORKS.NETWORKS:
        path = NETWORKS.build(name, network_size, str(out / "exports"))
        session = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
        inputs = NETWORKS.inputs_for(name, network_size, batch=3)
        outputs = dict(zip([o.name for o in session.get_outputs()], session.run(None, inputs)))
        members[name] = Member(name, "network", inputs, outputs)
        models[name] = onnx.load(path)

    repository = out / "repository"
    (repository / "zoo").mkdir(parents=True)
    merged = side_by_side({f"{name}__": model for name, model in models.items()}, "zoo",
                          "wasm-host tests/python/onnx_zoo.py")
    onnx.save(merged, repository / "zoo" / "model.onnx")
    return repository, members


def ask(addr: str, members: dict[str, Member]) -> dict:
    """Every member's inputs in one request to `zoo`: the served outputs by (member, tensor)."""
    import tritonclient.http as httpclient

    request, wanted = [], []
    for name, member in members.items():
        for tensor, rows in member.inputs.items():
            x = httpclient.InferInput(f"{name}__{tensor}", list(rows.shape),
                                      DATATYPES[rows.dtype])
            x.set_data_from_numpy(rows, binary_data=True)
            request.append(x)
        wanted += [httpclient.InferRequestedOutput(f"{name}__{tensor}", binary_data=True)
                   for tensor in member.expected]
    client = httpclient.InferenceServerClient(url=addr, network_timeout=300.0)
    try:
        result = client.infer("zoo", request, outputs=wanted)
    finally:
        client.close()
    return {(name, tensor): result.as_numpy(f"{name}__{tensor}")
            for name, member in members.items() for tensor in member.expected}


def pack(model: Path, out: Path, cache: Path) -> subprocess.CompletedProcess:
    """`wasm-host pack MODEL -o OUT`, with the zoo's compile cache (the runner compiled once)."""
    env = dict(os.environ, NO_COLOR="1", WASM_HOST_CACHE_DIR=str(cache))
    return subprocess.run([str(HOST), "pack", str(model), "-o", str(out)], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=600)
