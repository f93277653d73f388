"""Small graph edits shared by the precision passes."""

from __future__ import annotations

import onnx


def insert_nodes(graph: onnx.GraphProto, new_nodes: dict[str, list[onnx.NodeProto]]) -> None:
    """Insert ``new_nodes`` ({tensor: nodes reading it}) keeping the node list topologically
    sorted: after the tensor's producer, or first for graph inputs, initializers and key ""."""
    produced_by = {o: i for i, node in enumerate(graph.node) for o in node.output}
    ordered: list[onnx.NodeProto] = []
    after: dict[int, list[onnx.NodeProto]] = {}
    for name, nodes in new_nodes.items():
        if name in produced_by:
            after.setdefault(produced_by[name], []).extend(nodes)
        else:
            ordered.extend(nodes)
    for i, node in enumerate(graph.node):
        ordered.append(node)
        ordered.extend(after.get(i, []))
    del graph.node[:]
    graph.node.extend(ordered)


def default_opset(model: onnx.ModelProto) -> int:
    return next(o.version for o in model.opset_import if o.domain in ("", "ai.onnx"))
