"""Lowering pass: prepare the graph for the target's backend.

- ``tensorrt``: the custom nodes stay as they are and carry no function bodies, so the TensorRT
  ONNX parser binds them to our IPluginV3 plugins (namespace ``sparsefuse``).
- ``onnxruntime``: the FunctionProto of every custom op is attached, so ONNX Runtime runs the
  graph with no plugin (it inlines the functions at session creation).
"""

from __future__ import annotations

import onnx

from sparsefuse.passes.manager import PassContext
from sparsefuse.plugins import onnx_ops
from sparsefuse.plugins.common import DOMAIN

BACKENDS = ("onnxruntime", "tensorrt")


def lower(model: onnx.ModelProto, ctx: PassContext) -> onnx.ModelProto:
    """Lower for ``ctx.target_backend`` (one of BACKENDS)."""
    if ctx.target_backend not in BACKENDS:
        raise ValueError(f"lower: unknown target backend {ctx.target_backend!r}, expected one of {BACKENDS}")
    out = onnx_ops.strip_functions(model)
    if ctx.target_backend == "onnxruntime":
        out = onnx_ops.attach_functions(out)
    ctx.log(f"lower for {ctx.target_backend}: {len(custom_nodes(out))} custom nodes, "
            f"{len(out.functions)} function bodies")
    return out


def lowered_filename(target_tag: str) -> str:
    """lowered/<tag with '/' replaced by '_'>.onnx (docs/contracts.md)."""
    return target_tag.replace("/", "_") + ".onnx"


def custom_nodes(model: onnx.ModelProto) -> list[onnx.NodeProto]:
    """Nodes of the main graph in our domain."""
    return [node for node in model.graph.node if node.domain == DOMAIN]
