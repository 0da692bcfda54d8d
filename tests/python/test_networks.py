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

from onnx_zoo import NETWORKS

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

