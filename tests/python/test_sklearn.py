"""scikit-learn, XGBoost and LightGBM models served by wasm-host give onnxruntime's answers.

`examples/onnx/make_sklearn.py` trains each model on fixed-seed synthetic data, exports it with
skl2onnx or onnxmltools (zipmap off, as users export them) and records onnxruntime's outputs on
30 held-out rows, from each model's own file. The models are then merged side by side into one
graph (their nodes and attributes untouched, names prefixed) that a real `wasm-host` serves from
a model repository, packing it on the fly: the ai.onnx.ml operators run in the ONNX runner
(onnx-runner/src/ml/). Every model's rows go through the official Triton client, and every
output must be onnxruntime's: labels exactly, scores and values within 1e-4 relative (atol
1e-5).

Malformed tree ensembles (lengths that disagree, children or leaves that do not exist, cycles,
features or targets out of range) must fail `wasm-host pack` with one line, never a panic.
"""

import importlib.util
import os
import signal
import subprocess
import threading

import numpy as np
import pytest
import tritonclient.http as httpclient

from conftest import ANSI, HOST, LISTENING, ROOT

MAKE_SKLEARN = ROOT / "examples" / "onnx" / "make_sklearn.py"


def _load_script():
    spec = importlib.util.spec_from_file_location("make_sklearn", MAKE_SKLEARN)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


MAKE = _load_script()
NAMES = list(MAKE.MODELS)
# Packing the merged model compiles one component: allow for a loaded 2-core machine.
STARTUP_TIMEOUT = 600.0


def merged(models):
    """One ONNX graph holding every model side by side: model NAME's inputs and outputs become
    `NAME__<input>` and `NAME__<output>`, its other tensors are prefixed alike, and the opsets
    are the newest any of them imports. Nodes and attributes are the exports' own, so each
    model's outputs are computed exactly as in its own file; the host then packs and compiles
    one component instead of one per model (about 35 s each on 2 cores)."""
    import onnx
    from onnx import compose, helper

    nodes, inputs, outputs, initializers = [], [], [], []
    opsets = {}
    for name, path in models.items():
        model = compose.add_prefix(onnx.load(path), prefix=f"{name}__")
        graph = model.graph
        nodes += graph.node
        inputs += graph.input
        outputs += graph.output
        initializers += graph.initializer
        for opset in model.opset_import:
            domain = opset.domain or ""
            opsets[domain] = max(opsets.get(domain, 0), opset.version)
    graph = helper.make_graph(nodes, "sklearn_models", inputs, outputs, initializers)
    opset_imports = [helper.make_opsetid(d, v) for d, v in sorted(opsets.items())]
    merged = helper.make_model(graph, opset_imports=opset_imports)
    merged.ir_version = max(onnx.load(p).ir_version for p in models.values())
    merged.producer_name = "wasm-host tests/python/test_sklearn.py"
    return merged


@pytest.fixture(scope="module")
def repository(tmp_path_factory):
    """The exported models and onnxruntime's answers (`<name>.npz`), and a model repository
    serving them all as one model, `sklearn`."""
    import onnx

    out = tmp_path_factory.mktemp("sklearn")
    MAKE.main(["make_sklearn.py", str(out / "exports")])
    models = {name: out / "exports" / name / "model.onnx" for name in NAMES}
    (out / "repository" / "sklearn").mkdir(parents=True)
    onnx.save(merged(models), out / "repository" / "sklearn" / "model.onnx")
    return out


@pytest.fixture(scope="module")
def served(repository):
    """`wasm-host --model-repository` over the merged model, on an ephemeral loopback port;
    stopped by PID."""
    env = dict(os.environ, NO_COLOR="1", WASM_HOST_CACHE_DIR=str(repository / "cache"))
    env.pop("RUST_LOG", None)
    log = []
    proc = subprocess.Popen(
        [str(HOST), "--bind", "127.0.0.1:0", "--instances", "1",
         "--model-repository", str(repository / "repository")],
        cwd=ROOT, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE, env=env,
    )
    ready, found = threading.Event(), []

    def drain():
        for raw in proc.stderr:
            line = ANSI.sub("", raw.decode("utf-8", "replace")).rstrip("\n")
            log.append(line)
            m = LISTENING.search(line)
            if m and not ready.is_set():
                found.append(m.group(1))
                ready.set()
        ready.set()

    reader = threading.Thread(target=drain, daemon=True)
    reader.start()
    try:
        if not ready.wait(STARTUP_TIMEOUT) or not found:
            pytest.fail("wasm-host did not start on the repository; its log:\n" + "\n".join(log))
        client = httpclient.InferenceServerClient(url=found[0])
        if not client.is_model_ready("sklearn"):
            pytest.fail("the merged model is not ready; the host's log:\n" + "\n".join(log))
        client.close()
        yield found[0]
    finally:
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                os.kill(proc.pid, signal.SIGKILL)
                proc.wait()
        reader.join(timeout=5)


DATATYPES = {np.dtype(np.float32): "FP32", np.dtype(np.float64): "FP64",
             np.dtype(np.int64): "INT64"}


@pytest.fixture(scope="module")
def answers(served, repository):
    """Every model's test rows in one request to the merged model: the served outputs, by
    model and output name, and onnxruntime's from each model's own file."""
    request, wanted, expected = [], [], {}
    for name in NAMES:
        reference = np.load(repository / "exports" / f"{name}.npz")
        for key in reference.files:
            kind, tensor = key.split(":", 1)
            if kind == "input":
                rows = reference[key]
                x = httpclient.InferInput(f"{name}__{tensor}", list(rows.shape),
                                          DATATYPES[rows.dtype])
                x.set_data_from_numpy(rows, binary_data=True)
                request.append(x)
            else:
                expected[name, tensor] = reference[key]
                wanted.append(httpclient.InferRequestedOutput(f"{name}__{tensor}",
                                                              binary_data=True))
    client = httpclient.InferenceServerClient(url=served)
    result = client.infer("sklearn", request, outputs=wanted)
    client.close()
    got = {(name, tensor): result.as_numpy(f"{name}__{tensor}") for name, tensor in expected}
    return got, expected


@pytest.mark.parametrize("name", NAMES)
def test_served_model_gives_onnxruntime_answers(answers, name):
    got, expected = answers
    outputs = [tensor for (model, tensor) in expected if model == name]
    assert outputs, f"{name} has no outputs"
    for tensor in outputs:
        want, have = expected[name, tensor], got[name, tensor]
        assert have is not None, f"{name}: no output {tensor}"
        # onnxruntime may shape a label vector [N] or [N, 1]: the values must match one to one.
        assert have.size == want.size, (tensor, have.shape, want.shape)
        have = have.reshape(want.shape)
        if np.issubdtype(want.dtype, np.integer):
            np.testing.assert_array_equal(have, want, err_msg=f"{name}: {tensor}")
        else:
            np.testing.assert_allclose(have, want, rtol=1e-4, atol=1e-5,
                                       err_msg=f"{name}: {tensor}")
    # Not a constant answer: the rows tell the model apart.
    first = expected[name, outputs[0]]
    assert np.unique(first, axis=0).shape[0] > 1, f"{name} answers every row alike"


def _tree(**changes):
    """A two-leaf decision tree (TreeEnsembleRegressor), with some attributes replaced."""
    from onnx import TensorProto, helper

    attrs = dict(
        nodes_treeids=[0, 0, 0], nodes_nodeids=[0, 1, 2], nodes_featureids=[0, 0, 0],
        nodes_modes=["BRANCH_LEQ", "LEAF", "LEAF"], nodes_values=[0.5, 0.0, 0.0],
        nodes_truenodeids=[1, 0, 0], nodes_falsenodeids=[2, 0, 0],
        target_treeids=[0, 0], target_nodeids=[1, 2], target_ids=[0, 0],
        target_weights=[1.0, 2.0], n_targets=1,
    )
    attrs.update(changes)
    node = helper.make_node("TreeEnsembleRegressor", ["x"], ["y"], domain="ai.onnx.ml", **attrs)
    graph = helper.make_graph(
        [node], "tree",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [None, 2])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [None, 1])],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17),
                                                   helper.make_opsetid("ai.onnx.ml", 1)])


HOSTILE_TREES = {
    "lengths_disagree": (dict(nodes_values=[0.5, 0.0]), "nodes_values has 2 entries"),
    "child_out_of_range": (dict(nodes_falsenodeids=[7, 0, 0]),
                           "false child 7, which does not exist"),
    "cycle": (dict(nodes_modes=["BRANCH_LEQ", "BRANCH_LEQ", "LEAF"],
                   nodes_truenodeids=[1, 0, 0], nodes_falsenodeids=[2, 2, 0],
                   target_nodeids=[2, 2]), "has a cycle"),
    "leaf_names_a_branch": (dict(target_nodeids=[0, 2]), "which is not a leaf"),
    "feature_out_of_range": (dict(nodes_featureids=[5, 0, 0]), "reads feature 5"),
    "target_out_of_range": (dict(target_ids=[0, 3]), "target_ids holds 3"),
}


@pytest.mark.parametrize("case", list(HOSTILE_TREES))
def test_hostile_tree_attributes_are_refused_at_pack_time(repository, tmp_path, case):
    import onnx

    changes, message = HOSTILE_TREES[case]
    path = tmp_path / f"{case}.onnx"
    onnx.save(_tree(**changes), path)
    env = dict(os.environ, NO_COLOR="1", WASM_HOST_CACHE_DIR=str(repository / "cache"))
    done = subprocess.run([str(HOST), "pack", str(path), "-o", str(tmp_path / "out.wasm")],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode != 0, done.stdout + done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), done.stderr
    assert message in lines[0], lines[0]
    assert "panic" not in done.stderr
    assert not (tmp_path / "out.wasm").exists()


def _single(op_type, outputs, **attrs):
    """A graph of one ai.onnx.ml node on float rows of 2 features."""
    from onnx import TensorProto, helper

    node = helper.make_node(op_type, ["x"], [name for name, _ in outputs], domain="ai.onnx.ml",
                            **attrs)
    graph = helper.make_graph(
        [node], op_type,
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [None, 2])],
        [helper.make_tensor_value_info(name, dt, None) for name, dt in outputs],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17),
                                                   helper.make_opsetid("ai.onnx.ml", 1)])


def _classifier_outputs():
    from onnx import TensorProto

    return [("label", TensorProto.INT64), ("scores", TensorProto.FLOAT)]


HOSTILE_OTHERS = {
    "linear_coefficients_uneven": (
        lambda: _single("LinearClassifier", _classifier_outputs(), coefficients=[1.0, 2.0, 3.0],
                        intercepts=[0.0, 0.0], classlabels_ints=[0, 1]),
        "coefficients has 3 values, not a multiple of the 2"),
    "scaler_wider_than_rows": (
        lambda: _single("Scaler", [("y", 1)], offset=[0.0, 0.0, 0.0], scale=[1.0, 1.0, 1.0]),
        "expects 3 features per row, the input has 2"),
    "svm_vectors_per_class": (
        lambda: _single("SVMClassifier", _classifier_outputs(), vectors_per_class=[1, 1, 1],
                        support_vectors=[0.0] * 6, coefficients=[1.0, 1.0, 1.0], rho=[0.0],
                        classlabels_ints=[0, 1], kernel_type="RBF"),
        "vectors_per_class has 3 entries"),
    "onehot_string_categories": (
        lambda: _single("OneHotEncoder", [("y", 1)], cats_strings=["a", "b"]),
        "string categories"),
}


@pytest.mark.parametrize("case", list(HOSTILE_OTHERS))
def test_inconsistent_ml_operators_are_refused_at_pack_time(repository, tmp_path, case):
    import onnx

    build, message = HOSTILE_OTHERS[case]
    path = tmp_path / f"{case}.onnx"
    onnx.save(build(), path)
    env = dict(os.environ, NO_COLOR="1", WASM_HOST_CACHE_DIR=str(repository / "cache"))
    done = subprocess.run([str(HOST), "pack", str(path), "-o", str(tmp_path / "out.wasm")],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode != 0, done.stdout + done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), done.stderr
    assert message in lines[0], lines[0]
    assert "panic" not in done.stderr


def test_the_untouched_hostile_tree_template_packs(repository, tmp_path):
    """The template itself is valid, so each refusal above is the change's doing."""
    import onnx

    path = tmp_path / "tree.onnx"
    onnx.save(_tree(), path)
    env = dict(os.environ, NO_COLOR="1", WASM_HOST_CACHE_DIR=str(repository / "cache"))
    done = subprocess.run([str(HOST), "pack", str(path), "-o", str(tmp_path / "out.wasm")],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
