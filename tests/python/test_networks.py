"""Whole networks as exporters write them give onnxruntime's answers through wasm-host.

`examples/onnx/make_networks.py` writes a ResNet-50, an Inception v1 (GoogLeNet) and a
BERT-style encoder with seeded random weights stored in the file. CI checks them at
`--size small` (every operator and kind of block, narrower and on smaller inputs) as members of
the ONNX zoo (onnx_zoo.py), served from a model repository and asked through the official Triton
client; `make networks` checks them at their real size (102, 28 and 114 MB of weights).

Tolerance: float32 networks summed in a different order than onnxruntime's kernels, so each
output must match within 1e-4 relative and 1e-5 of its largest magnitude.
"""

import numpy as np
import pytest

from onnx_zoo import NETWORKS, pack

NAMES = list(NETWORKS.NETWORKS)


@pytest.mark.parametrize("name", NAMES)
def test_network_gives_onnxruntime_answers(zoo, name):
    member = zoo.members[name]
    assert member.expected, f"{name} has no outputs"
    for tensor, want in member.expected.items():
        have = zoo.answers[name, tensor]
        assert have is not None and have.shape == want.shape, (tensor, getattr(have, "shape", None))
        scale = float(np.abs(want).max())
        np.testing.assert_allclose(have, want, rtol=1e-4, atol=1e-5 * max(scale, 1.0),
                                   err_msg=f"{name}: {tensor}")
        # Not a constant answer: the rows of the batch tell the inputs apart.
        assert np.unique(want.reshape(want.shape[0], -1), axis=0).shape[0] > 1



def _single_node(op_type, inputs, output, opset, **attrs):
    """A one-node graph over float inputs `{name: shape}`."""
    from onnx import TensorProto, helper

    node = helper.make_node(op_type, list(inputs), [output], name="suspect", **attrs)
    graph = helper.make_graph(
        [node], op_type,
        [helper.make_tensor_value_info(n, TensorProto.FLOAT, s) for n, s in inputs.items()],
        [helper.make_tensor_value_info(output, TensorProto.FLOAT, None)],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])


# Forms tract runs but answers differently from onnxruntime (found by the ONNX backend tests:
# test_simple_rnn_reverse, test_spacetodepth_crd_mode_example): refused, never served wrong.
ANSWERS_WRONG = {
    "rnn_reverse": (lambda: _single_node("RNN", {"X": [2, 1, 3], "W": [1, 4, 3], "R": [1, 4, 4]},
                                         "Y", 22, hidden_size=4, direction="reverse"),
                    "reverse-direction recurrence"),
    "space_to_depth_crd": (lambda: _single_node("SpaceToDepth", {"x": [1, 1, 4, 4]}, "y", 28,
                                                blocksize=2, mode="CRD"),
                           "CRD mode"),
}


@pytest.mark.parametrize("case", list(ANSWERS_WRONG))
def test_operator_forms_tract_answers_wrong_are_refused_at_pack_time(zoo, tmp_path, case):
    import onnx

    build, message = ANSWERS_WRONG[case]
    path = tmp_path / f"{case}.onnx"
    onnx.save(build(), path)
    done = pack(path, tmp_path / "out.wasm", zoo.cache)
    assert done.returncode != 0, done.stdout + done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and "refuses it rather than answer wrong" in lines[0], done.stderr
    assert message in lines[0] and "`suspect`" in lines[0], lines[0]
