#!/usr/bin/env python3
"""Builds whole networks as their exporters write them: a ResNet, an Inception (GoogLeNet) and a
BERT-style encoder, with seeded random weights stored in the file.

    python3 examples/onnx/make_networks.py OUT_DIR [--size small|real] [NAME ...]

Needs `onnx` and `numpy` (tests/python/requirements.txt). The same versions write the same bytes.

  resnet      ResNet-50 v1.5: 7x7 stem, bottleneck stages (3, 4, 6, 3) with projection
              shortcuts, BatchNormalization after every convolution, global average pool, a
              1000-way Gemm. Input `image` [N, 3, 224, 224]. 25.6 M weights, 102 MB.
  inception   Inception v1 (GoogLeNet): the nine inception modules (1x1, 1x1→3x3, 1x1→5x5 and
              pool→1x1 branches joined by Concat), max pools between stages, global average pool,
              a 1000-way Gemm. Input `image` [N, 3, 224, 224]. 7 M weights, 28 MB.
  bert        A BERT-style encoder (BERT-small: 4 layers, hidden 512, 8 heads, feed-forward
              2048, vocabulary 30,522, 128 tokens): Gather embeddings, LayerNormalization,
              multi-head attention as MatMul/Reshape/Transpose/Softmax with an additive mask, Gelu
              written with Erf, a tanh pooler. Inputs `input_ids`, `attention_mask` int64
              [N, 128]; outputs `last_hidden_state` and `pooler_output`. 29 M weights, 116 MB.

`--size small` keeps each network's structure (every operator, every kind of block) at a width
and input size that packs and runs in seconds: what CI checks. `--size real` (the default) is the
real size, checked by `make networks`.
"""

import argparse
import os

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

OPSET = [helper.make_opsetid("", 17)]

SIZES = {
    "real": {
        "resnet": dict(width=64, blocks=(3, 4, 6, 3), classes=1000, image=224),
        "inception": dict(divisor=1, classes=1000, image=224),
        "bert": dict(vocab=30522, hidden=512, heads=8, layers=4, ffn=2048, tokens=128),
    },
    "small": {
        "resnet": dict(width=8, blocks=(1, 1, 1, 1), classes=10, image=32),
        "inception": dict(divisor=8, classes=10, image=64),
        "bert": dict(vocab=1000, hidden=64, heads=4, layers=2, ffn=128, tokens=16),
    },
}


class Graph:
    """Nodes and initializers being written, with fresh names and seeded weights."""

    def __init__(self, seed):
        self.rng = np.random.default_rng(seed)
        self.nodes, self.inits = [], []
        self.count = 0

    def name(self, stem):
        self.count += 1
        return f"{stem}_{self.count}"

    def const(self, stem, array):
        name = self.name(stem)
        # Not np.ascontiguousarray: it turns a scalar into a vector of one.
        self.inits.append(numpy_helper.from_array(np.require(array, requirements="C"), name))
        return name

    def normal(self, stem, shape, std):
        return self.const(stem, (self.rng.standard_normal(shape) * std).astype(np.float32))

    def op(self, op_type, inputs, **attrs):
        out = self.name(op_type.lower())
        self.nodes.append(helper.make_node(op_type, inputs, [out], name=out, **attrs))
        return out

    # Convolutional blocks ------------------------------------------------------------------

    def conv(self, x, cin, cout, kernel, stride=1, bias=True):
        """A convolution with He-initialised weights, padded to keep the size (÷ stride)."""
        w = self.normal("w", (cout, cin, kernel, kernel), np.sqrt(2.0 / (cin * kernel * kernel)))
        inputs = [x, w] + ([self.normal("b", (cout,), 0.01)] if bias else [])
        pad = kernel // 2
        return self.op("Conv", inputs, kernel_shape=[kernel, kernel], strides=[stride, stride],
                       pads=[pad] * 4)

    def batch_norm(self, x, channels, gamma=1.0):
        """Inference-mode BatchNormalization with running statistics near what training leaves."""
        scale = self.const("gamma", (gamma * (1 + 0.1 * self.rng.standard_normal(channels)))
                           .astype(np.float32))
        bias = self.normal("beta", (channels,), 0.1)
        mean = self.normal("mean", (channels,), 0.1)
        var = self.const("var", self.rng.uniform(0.5, 1.5, channels).astype(np.float32))
        return self.op("BatchNormalization", [x, scale, bias, mean, var], epsilon=1e-5)

    def max_pool(self, x, kernel=3, stride=2):
        return self.op("MaxPool", [x], kernel_shape=[kernel, kernel], strides=[stride, stride],
                       pads=[kernel // 2] * 4)

    def classifier(self, x, channels, classes):
        pooled = self.op("Flatten", [self.op("GlobalAveragePool", [x])], axis=1)
        w = self.normal("fc_w", (classes, channels), np.sqrt(1.0 / channels))
        return self.op("Gemm", [pooled, w, self.normal("fc_b", (classes,), 0.01)], transB=1)

    # Transformer blocks --------------------------------------------------------------------

    def linear(self, x, cin, cout):
        w = self.normal("w", (cin, cout), np.sqrt(1.0 / cin))
        return self.op("Add", [self.op("MatMul", [x, w]), self.normal("b", (cout,), 0.02)])

    def layer_norm(self, x, hidden):
        gamma = self.const("ln_g", (1 + 0.1 * self.rng.standard_normal(hidden)).astype(np.float32))
        beta = self.normal("ln_b", (hidden,), 0.1)
        return self.op("LayerNormalization", [x, gamma, beta], axis=-1, epsilon=1e-12)

    def gelu(self, x):
        """Gelu as exporters write it before opset 20: 0.5 · x · (1 + erf(x / √2))."""
        scaled = self.op("Div", [x, self.const("sqrt2", np.array(np.sqrt(2.0), np.float32))])
        one_plus = self.op("Add", [self.op("Erf", [scaled]), self.const("one", np.array(1.0, np.float32))])
        return self.op("Mul", [self.op("Mul", [x, one_plus]), self.const("half", np.array(0.5, np.float32))])


def image_input(size):
    return helper.make_tensor_value_info("image", TensorProto.FLOAT, ["N", 3, size, size])


def model_of(g, name, inputs, outputs):
    """The model, each output `(tensor, name, shape)` renamed as exporters name it."""
    renames = {tensor: new for tensor, new, _ in outputs}
    for node in g.nodes:
        node.output[:] = [renames.get(o, o) for o in node.output]
    values = [helper.make_tensor_value_info(new, TensorProto.FLOAT, shape)
              for _, new, shape in outputs]
    graph = helper.make_graph(g.nodes, name, inputs, values, g.inits)
    model = helper.make_model(graph, opset_imports=OPSET)
    model.ir_version = 8
    model.producer_name = "wasm-host examples/onnx/make_networks.py"
    model.producer_version = "1"
    onnx.checker.check_model(model, full_check=True)
    return model


def resnet(width, blocks, classes, image):
    g = Graph(20261207)
    x = g.op("Relu", [g.batch_norm(g.conv("image", 3, width, 7, stride=2, bias=False), width)])
    x = g.max_pool(x)
    cin = width
    for stage, count in enumerate(blocks):
        mid = width * 2**stage
        cout = mid * 4
        for block in range(count):
            stride = 2 if stage > 0 and block == 0 else 1
            y = g.op("Relu", [g.batch_norm(g.conv(x, cin, mid, 1, bias=False), mid)])
            # v1.5: the stride is on the 3x3 convolution.
            y = g.op("Relu", [g.batch_norm(g.conv(y, mid, mid, 3, stride, bias=False), mid)])
            # The last BatchNormalization of a block starts small, as in trained ResNets, so
            # fifty layers of random weights keep their activations in range.
            y = g.batch_norm(g.conv(y, mid, cout, 1, bias=False), cout, gamma=0.2)
            shortcut = x
            if stride != 1 or cin != cout:
                shortcut = g.batch_norm(g.conv(x, cin, cout, 1, stride, bias=False), cout)
            x = g.op("Relu", [g.op("Add", [y, shortcut])])
            cin = cout
    logits = g.classifier(x, cin, classes)
    return model_of(g, "resnet", [image_input(image)], [(logits, "logits", ["N", classes])])


# GoogLeNet's modules: input channels, 1x1, 3x3 reduce, 3x3, 5x5 reduce, 5x5, pool projection.
INCEPTION = {
    "3a": (192, 64, 96, 128, 16, 32, 32),
    "3b": (256, 128, 128, 192, 32, 96, 64),
    "4a": (480, 192, 96, 208, 16, 48, 64),
    "4b": (512, 160, 112, 224, 24, 64, 64),
    "4c": (512, 128, 128, 256, 24, 64, 64),
    "4d": (512, 112, 144, 288, 32, 64, 64),
    "4e": (528, 256, 160, 320, 32, 128, 128),
    "5a": (832, 256, 160, 320, 32, 128, 128),
    "5b": (832, 384, 192, 384, 48, 128, 128),
}


def inception(divisor, classes, image):
    g = Graph(20261208)

    def c(n):
        return max(n // divisor, 4)

    def conv_relu(x, cin, cout, kernel, stride=1):
        return g.op("Relu", [g.conv(x, cin, cout, kernel, stride)])

    x = g.max_pool(conv_relu("image", 3, c(64), 7, stride=2))
    x = conv_relu(x, c(64), c(64), 1)
    x = g.max_pool(conv_relu(x, c(64), c(192), 3))
    cin = c(192)
    for name, (_, b1, b3r, b3, b5r, b5, bp) in INCEPTION.items():
        if name in ("4a", "5a"):
            x = g.max_pool(x)
        one = conv_relu(x, cin, c(b1), 1)
        three = conv_relu(conv_relu(x, cin, c(b3r), 1), c(b3r), c(b3), 3)
        five = conv_relu(conv_relu(x, cin, c(b5r), 1), c(b5r), c(b5), 5)
        pool = conv_relu(g.op("MaxPool", [x], kernel_shape=[3, 3], strides=[1, 1],
                              pads=[1, 1, 1, 1]), cin, c(bp), 1)
        x = g.op("Concat", [one, three, five, pool], axis=1)
        cin = c(b1) + c(b3) + c(b5) + c(bp)
    logits = g.classifier(x, cin, classes)
    return model_of(g, "inception", [image_input(image)], [(logits, "logits", ["N", classes])])


def bert(vocab, hidden, heads, layers, ffn, tokens):
    g = Graph(20261209)
    head = hidden // heads
    ids = helper.make_tensor_value_info("input_ids", TensorProto.INT64, ["N", tokens])
    mask = helper.make_tensor_value_info("attention_mask", TensorProto.INT64, ["N", tokens])

    words = g.op("Gather", [g.normal("word_embeddings", (vocab, hidden), 0.02), "input_ids"])
    positions = g.normal("position_embeddings", (tokens, hidden), 0.02)
    segment = g.normal("token_type_embedding", (hidden,), 0.02)
    x = g.layer_norm(g.op("Add", [g.op("Add", [words, positions]), segment]), hidden)

    # The mask as BERT exporters write it: (1 - mask) · -10000, shaped [N, 1, 1, tokens].
    keep = g.op("Cast", ["attention_mask"], to=TensorProto.FLOAT)
    blocked = g.op("Sub", [g.const("one", np.array(1.0, np.float32)), keep])
    additive = g.op("Mul", [blocked, g.const("minus", np.array(-10000.0, np.float32))])
    additive = g.op("Unsqueeze", [additive, g.const("axes", np.array([1, 2], np.int64))])

    split = g.const("split_heads", np.array([0, 0, heads, head], np.int64))
    merge = g.const("merge_heads", np.array([0, 0, hidden], np.int64))
    scale = g.const("scale", np.array(1.0 / np.sqrt(head), np.float32))
    for _ in range(layers):
        q = g.op("Transpose", [g.op("Reshape", [g.linear(x, hidden, hidden), split])],
                 perm=[0, 2, 1, 3])
        k = g.op("Transpose", [g.op("Reshape", [g.linear(x, hidden, hidden), split])],
                 perm=[0, 2, 3, 1])
        v = g.op("Transpose", [g.op("Reshape", [g.linear(x, hidden, hidden), split])],
                 perm=[0, 2, 1, 3])
        scores = g.op("Add", [g.op("Mul", [g.op("MatMul", [q, k]), scale]), additive])
        context = g.op("MatMul", [g.op("Softmax", [scores], axis=-1), v])
        context = g.op("Reshape", [g.op("Transpose", [context], perm=[0, 2, 1, 3]), merge])
        x = g.layer_norm(g.op("Add", [g.linear(context, hidden, hidden), x]), hidden)
        inner = g.gelu(g.linear(x, hidden, ffn))
        x = g.layer_norm(g.op("Add", [g.linear(inner, ffn, hidden), x]), hidden)

    first = g.op("Gather", [x, g.const("first", np.array(0, np.int64))], axis=1)
    pooled = g.op("Tanh", [g.linear(first, hidden, hidden)])
    # Named as Hugging Face's exports name them.
    return model_of(g, "bert", [ids, mask], [
        (g.op("Identity", [x]), "last_hidden_state", ["N", tokens, hidden]),
        (pooled, "pooler_output", ["N", hidden]),
    ])


NETWORKS = {"resnet": resnet, "inception": inception, "bert": bert}


def inputs_for(name, size, batch, seed=7):
    """Seeded inputs for a network: images in [0, 1), or token ids with the last quarter of
    each row masked out."""
    rng = np.random.default_rng(seed)
    params = SIZES[size][name]
    if name == "bert":
        tokens = params["tokens"]
        ids = rng.integers(0, params["vocab"], (batch, tokens), dtype=np.int64)
        mask = np.ones((batch, tokens), np.int64)
        mask[:, tokens - tokens // 4:] = 0
        return {"input_ids": ids, "attention_mask": mask}
    image = params["image"]
    return {"image": rng.random((batch, 3, image, image), dtype=np.float32)}


def build(name, size, out_dir):
    """Write OUT_DIR/NAME.onnx and return its path."""
    model = NETWORKS[name](**SIZES[size][name])
    path = os.path.join(out_dir, f"{name}.onnx")
    onnx.save(model, path)
    return path


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("out_dir")
    parser.add_argument("--size", choices=sorted(SIZES), default="real")
    parser.add_argument("names", nargs="*", metavar="NAME", help=", ".join(NETWORKS))
    args = parser.parse_args(argv)
    for name in args.names:
        if name not in NETWORKS:
            parser.error(f"no network named {name!r}: choose from {', '.join(NETWORKS)}")
    os.makedirs(args.out_dir, exist_ok=True)
    for name in args.names or NETWORKS:
        path = build(name, args.size, args.out_dir)
        print(f"{path}: {os.path.getsize(path) / 1e6:.1f} MB")


if __name__ == "__main__":
    main()
