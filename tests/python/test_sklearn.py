"""scikit-learn, XGBoost and LightGBM models served by wasm-host give onnxruntime's answers.

`examples/onnx/make_sklearn.py` trains each model on fixed-seed synthetic data, exports it with
skl2onnx or onnxmltools (zipmap off, as users export them) and records onnxruntime's outputs on
30 held-out rows, from each model's own file. The models are members of the ONNX zoo
(onnx_zoo.py: merged side by side into one graph, their nodes and attributes untouched) that a
real `wasm-host` serves from a model repository, packing it on the fly: the ai.onnx.ml operators
run in the ONNX runner (onnx-runner/src/ml/). Every model's rows go through the official Triton client, and every
output must be onnxruntime's: labels exactly, scores and values within 1e-4 relative (atol
1e-5).

Malformed tree ensembles (lengths that disagree, children or leaves that do not exist, cycles,
features or targets out of range) must fail `wasm-host pack` with one line, never a panic.
"""

import numpy as np
import pytest

from onnx_zoo import SKLEARN, pack

NAMES = list(SKLEARN.MODELS)


@pytest.mark.parametrize("name", NAMES)
def test_served_model_gives_onnxruntime_answers(zoo, name):
    expected = zoo.members[name].expected
    outputs = list(expected)
    assert outputs, f"{name} has no outputs"
    for tensor in outputs:
        want, have = expected[tensor], zoo.answers[name, tensor]
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
    first = expected[outputs[0]]
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
def test_hostile_tree_attributes_are_refused_at_pack_time(zoo, tmp_path, case):
    import onnx

    changes, message = HOSTILE_TREES[case]
    path = tmp_path / f"{case}.onnx"
    onnx.save(_tree(**changes), path)
    done = pack(path, tmp_path / "out.wasm", zoo.cache)
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
def test_inconsistent_ml_operators_are_refused_at_pack_time(zoo, tmp_path, case):
    import onnx

    build, message = HOSTILE_OTHERS[case]
    path = tmp_path / f"{case}.onnx"
    onnx.save(build(), path)
    done = pack(path, tmp_path / "out.wasm", zoo.cache)
    assert done.returncode != 0, done.stdout + done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), done.stderr
    assert message in lines[0], lines[0]
    assert "panic" not in done.stderr


def test_the_untouched_hostile_tree_template_packs(zoo, tmp_path):
    """The template itself is valid, so each refusal above is the change's doing."""
    import onnx

    path = tmp_path / "tree.onnx"
    onnx.save(_tree(), path)
    done = pack(path, tmp_path / "out.wasm", zoo.cache)
    assert done.returncode == 0, done.stderr
