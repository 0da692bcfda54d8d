#!/usr/bin/env python3
"""Builds the ONNX models the ONNX tests and benchmark use, deterministically.

    python3 examples/onnx/make_models.py OUT_DIR [NAME ...]

Needs the `onnx` and `numpy` packages (tests/python/requirements.txt). Weights come from a seeded
numpy generator, so the same versions write the same bytes. Models (default: all):

  cnn          a small convolutional network for 1x28x28 images: conv, relu, max pool, conv, relu,
               average pool, flatten, gemm, relu, gemm, softmax; batch dimension symbolic ("N"). ~0.9 MB
  big          one Gemm with 16 MiB of weights (1024 -> 4096) and a relu: the density benchmark
  large        one Gemm with 160 MiB of weights: more than one default hostcall copy
  zipmap       a scikit-learn style classifier whose probabilities are a ZipMap: pack must refuse it
  unsupported  a graph with an operator tract lacks (Det, node "determinant"): pack must refuse it
  bad_shapes   a MatMul of [N, 3] by [4, 2]: shapes cannot be resolved, pack must refuse it
  huge_constant  a few hundred bytes that expand to a 128 MiB constant (ConstantOfShape 8192x4096):
               too big for a 64 MiB memory limit, pack must refuse it
"""

import os
import sys

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

OPSET = [helper.make_opsetid("", 17)]


def save(model, out_dir, name):
    model.producer_name = "wasm-host examples/onnx/make_models.py"
    model.producer_version = "1"
    path = os.path.join(out_dir, f"{name}.onnx")
    onnx.save(model, path)
    return path


def init(name, array):
    return numpy_helper.from_array(np.ascontiguousarray(array), name)


def cnn():
    rng = np.random.default_rng(20240611)

    def he(shape, fan_in):
        return (rng.standard_normal(shape) * np.sqrt(2.0 / fan_in)).astype(np.float32)

    inits = [
        init("conv1_w", he((16, 1, 3, 3), 9)),
        init("conv1_b", (rng.standard_normal(16) * 0.01).astype(np.float32)),
        init("conv2_w", he((32, 16, 3, 3), 16 * 9)),
        init("conv2_b", (rng.standard_normal(32) * 0.01).astype(np.float32)),
        init("fc1_w", he((128, 32 * 7 * 7), 32 * 7 * 7)),
        init("fc1_b", (rng.standard_normal(128) * 0.01).astype(np.float32)),
        init("fc2_w", he((10, 128), 128)),
        init("fc2_b", (rng.standard_normal(10) * 0.01).astype(np.float32)),
    ]
    nodes = [
        helper.make_node("Conv", ["image", "conv1_w", "conv1_b"], ["c1"], name="conv1",
                         kernel_shape=[3, 3], pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c1"], ["r1"], name="relu1"),
        helper.make_node("MaxPool", ["r1"], ["p1"], name="maxpool1", kernel_shape=[2, 2], strides=[2, 2]),
        helper.make_node("Conv", ["p1", "conv2_w", "conv2_b"], ["c2"], name="conv2",
                         kernel_shape=[3, 3], pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c2"], ["r2"], name="relu2"),
        helper.make_node("AveragePool", ["r2"], ["p2"], name="avgpool2", kernel_shape=[2, 2], strides=[2, 2]),
        helper.make_node("Flatten", ["p2"], ["f"], name="flatten", axis=1),
        helper.make_node("Gemm", ["f", "fc1_w", "fc1_b"], ["g1"], name="fc1", transB=1),
        helper.make_node("Relu", ["g1"], ["r3"], name="relu3"),
        helper.make_node("Gemm", ["r3", "fc2_w", "fc2_b"], ["logits"], name="fc2", transB=1),
        helper.make_node("Softmax", ["logits"], ["probabilities"], name="softmax", axis=1),
    ]
    graph = helper.make_graph(
        nodes, "cnn",
        [helper.make_tensor_value_info("image", TensorProto.FLOAT, ["N", 1, 28, 28])],
        [helper.make_tensor_value_info("probabilities", TensorProto.FLOAT, ["N", 10])],
        inits,
    )
    return helper.make_model(graph, opset_imports=OPSET)


def big():
    rng = np.random.default_rng(16)
    w = (rng.uniform(-1, 1, (1024, 4096)) / 32).astype(np.float32)  # 16 MiB
    b = np.zeros(4096, dtype=np.float32)
    nodes = [
        helper.make_node("Gemm", ["x", "w", "b"], ["z"], name="dense"),
        helper.make_node("Relu", ["z"], ["y"], name="relu"),
    ]
    graph = helper.make_graph(
        nodes, "big",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 1024])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 4096])],
        [init("w", w), init("b", b)],
    )
    return helper.make_model(graph, opset_imports=OPSET)


def large():
    """One Gemm with 160 MiB of weights (4096 -> 10240): more than the 128 MiB wasmtime copies
    out of a guest in one call by default, which once made `pack` panic on any real network."""
    rng = np.random.default_rng(160)
    w = (rng.uniform(-1, 1, (4096, 10240)) / 64).astype(np.float32)  # 160 MiB
    b = rng.uniform(-1, 1, 10240).astype(np.float32)
    nodes = [helper.make_node("Gemm", ["x", "w", "b"], ["y"], name="dense")]
    graph = helper.make_graph(
        nodes, "large",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4096])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 10240])],
        [init("w", w), init("b", b)],
    )
    return helper.make_model(graph, opset_imports=OPSET)


def zipmap():
    """What skl2onnx writes by default for a classifier: probabilities as a list of dicts."""
    w = np.arange(12, dtype=np.float32).reshape(4, 3) / 10
    nodes = [
        helper.make_node("MatMul", ["input", "w"], ["scores"], name="MatMul"),
        helper.make_node("Softmax", ["scores"], ["probabilities"], name="Softmax", axis=1),
        helper.make_node("ArgMax", ["probabilities"], ["label"], name="ArgMax", axis=1, keepdims=0),
        helper.make_node("ZipMap", ["probabilities"], ["output_probability"], name="ZipMap",
                         domain="ai.onnx.ml", classlabels_int64s=[0, 1, 2]),
    ]
    seq_map = helper.make_sequence_type_proto(
        helper.make_map_type_proto(TensorProto.INT64, helper.make_tensor_type_proto(TensorProto.FLOAT, [])))
    graph = helper.make_graph(
        nodes, "zipmap",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, [None, 4])],
        [helper.make_tensor_value_info("label", TensorProto.INT64, [None]),
         helper.make_value_info("output_probability", seq_map)],
        [init("w", w)],
    )
    return helper.make_model(graph, opset_imports=OPSET + [helper.make_opsetid("ai.onnx.ml", 1)])


def unsupported():
    nodes = [helper.make_node("Det", ["x"], ["d"], name="determinant")]
    graph = helper.make_graph(
        nodes, "unsupported",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, 3])],
        [helper.make_tensor_value_info("d", TensorProto.FLOAT, ["N"])],
    )
    return helper.make_model(graph, opset_imports=OPSET)


def bad_shapes():
    w = np.ones((4, 2), dtype=np.float32)
    nodes = [helper.make_node("MatMul", ["x", "w"], ["y"], name="matmul")]
    graph = helper.make_graph(
        nodes, "bad_shapes",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 2])],
        [init("w", w)],
    )
    return helper.make_model(graph, opset_imports=OPSET)


def huge_constant():
    nodes = [
        helper.make_node("ConstantOfShape", ["shape"], ["ones"], name="ones",
                         value=helper.make_tensor("one", TensorProto.FLOAT, [1], [1.0])),
        helper.make_node("MatMul", ["x", "ones"], ["y"], name="matmul"),
    ]
    graph = helper.make_graph(
        nodes, "huge_constant",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 8192])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 4096])],
        [init("shape", np.array([8192, 4096], dtype=np.int64))],
    )
    return helper.make_model(graph, opset_imports=OPSET)


MODELS = {"cnn": cnn, "big": big, "large": large, "zipmap": zipmap, "unsupported": unsupported, "bad_shapes": bad_shapes,
          "huge_constant": huge_constant}


def main(argv):
    if len(argv) < 2:
        sys.exit(__doc__)
    out_dir = argv[1]
    os.makedirs(out_dir, exist_ok=True)
    for name in argv[2:] or MODELS:
        path = save(MODELS[name](), out_dir, name)
        print(f"{path} ({os.path.getsize(path)} bytes)")


if __name__ == "__main__":
    main(sys.argv)
