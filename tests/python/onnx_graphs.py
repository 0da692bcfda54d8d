"""Graphs side by side: many ONNX models served as one, so a test packs (and compiles) once.

Packing compiles the ONNX runner into every component (~35-60 s on 2 cores), so the suites that
check many models (scikit-learn exports, whole networks, the backend operator cases) merge them
into one graph: each model's tensors get a prefix, its nodes and attributes are untouched, and
each model computes exactly what it computes alone.
"""

from __future__ import annotations


def side_by_side(models: dict, graph_name: str, producer: str, opsets: dict | None = None):
    """One model holding every `{prefix: onnx.ModelProto}` side by side, each tensor of model
    PREFIX renamed `PREFIX<name>`; the opsets are the newest any of them imports (at least
    `opsets`), the IR version the newest any of them uses."""
    import onnx  # noqa: F401  (compose needs the package loaded)
    from onnx import compose, helper

    nodes, inputs, outputs, inits, infos, functions = [], [], [], [], [], []
    versions = dict(opsets or {})
    for prefix, model in models.items():
        renamed = compose.add_prefix(model, prefix=prefix)
        graph = renamed.graph
        nodes += graph.node
        inputs += graph.input
        outputs += graph.output
        inits += graph.initializer
        infos += graph.value_info
        functions += renamed.functions
        for opset in model.opset_import:
            domain = opset.domain or ""
            versions[domain] = max(versions.get(domain, 0), opset.version)
    graph = helper.make_graph(nodes, graph_name, inputs, outputs, inits, value_info=infos)
    merged = helper.make_model(
        graph,
        opset_imports=[helper.make_opsetid(d, v) for d, v in sorted(versions.items())],
        functions=functions,
    )
    merged.ir_version = max(m.ir_version for m in models.values())
    merged.producer_name = producer
    return merged
