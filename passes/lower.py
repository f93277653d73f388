"""Lowering pass: prepare the graph for the target's backend.

- ``tensorrt``: the custom nodes carry no function bodies, so the TensorRT ONNX parser binds them
  to our IPluginV3 plugins. Every custom node gets ``plugin_namespace="sparsefuse"`` (the parser
  looks plugins up by it), and every strided SparseConv3d (subm=0) a third output ``num_out``
  (int32 scalar): its plugin declares that size tensor, and the parser requires as many node
  outputs as plugin outputs. The schemas and function bodies accept both, so ORT can still run
  the graph with the bodies attached (:func:`runnable`).
- ``onnxruntime``: the FunctionProto of every custom op is attached (and every SparseConv3d node
  lists num_out, since ORT requires a node to list all outputs of its function), so ONNX Runtime
  runs the graph with no plugin (it inlines the functions at session creation).
"""

from __future__ import annotations

import onnx

from sparsefuse.passes.manager import PassContext
from sparsefuse.plugins import onnx_ops
from sparsefuse.plugins.common import DOMAIN

BACKENDS = ("onnxruntime", "tensorrt")
PLUGIN_NAMESPACE = "sparsefuse"  # plugins/trt_common.h kNamespace


def lower(model: onnx.ModelProto, ctx: PassContext) -> onnx.ModelProto:
    """Lower for ``ctx.target_backend`` (one of BACKENDS)."""
    if ctx.target_backend not in BACKENDS:
        raise ValueError(f"lower: unknown target backend {ctx.target_backend!r}, expected one of {BACKENDS}")
    out = onnx_ops.strip_functions(model)
    if ctx.target_backend == "onnxruntime":
        out = onnx_ops.attach_functions(out)
    else:
        _bind_plugins(out)
    ctx.log(f"lower for {ctx.target_backend}: {len(custom_nodes(out))} custom nodes, "
            f"{len(out.functions)} function bodies")
    return out


def custom_nodes(model: onnx.ModelProto) -> list[onnx.NodeProto]:
    """Nodes of the main graph in our domain."""
    return [node for node in model.graph.node if node.domain == DOMAIN]


def runnable(model: onnx.ModelProto) -> onnx.ModelProto:
    """A copy of a lowered model (either backend) that ONNX Runtime can run: the function bodies
    attached (which also lists num_out on every SparseConv3d node, as ORT requires)."""
    return onnx_ops.attach_functions(model)


def _bind_plugins(model: onnx.ModelProto) -> None:
    """In place: plugin_namespace on every custom node; num_out exactly on the strided
    SparseConv3d nodes (TensorRT's subm=1 plugin has two outputs, its strided one three)."""
    used = {name for node in model.graph.node for name in node.input} | {o.name for o in model.graph.output}
    names = {name for node in model.graph.node for name in node.output}
    for node in custom_nodes(model):
        _set_string_attribute(node, "plugin_namespace", PLUGIN_NAMESPACE)
        if node.op_type != "SparseConv3d":
            continue
        wanted = 2 if _int_attribute(node, "subm", 0) else 3
        if len(node.output) > wanted and not set(node.output[wanted:]) & used:
            del node.output[wanted:]
        elif len(node.output) < wanted:
            node.output.append(_fresh_name(f"{node.output[0] or node.name}__num_out", names))


def _fresh_name(base: str, taken: set[str]) -> str:
    name, i = base, 0
    while name in taken:
        i += 1
        name = f"{base}_{i}"
    taken.add(name)
    return name


def _set_string_attribute(node: onnx.NodeProto, name: str, value: str) -> None:
    kept = [a for a in node.attribute if a.name != name]
    del node.attribute[:]
    node.attribute.extend([*kept, onnx.helper.make_attribute(name, value)])


def _int_attribute(node: onnx.NodeProto, name: str, default: int) -> int:
    return next((int(a.i) for a in node.attribute if a.name == name), default)
