"""Cleanup pass: constant folding and dead-code removal with onnxscript's optimizer.

Two things must survive it:
- our custom nodes (the optimizer has no evaluator for domain ``sparsefuse``, so it leaves them);
- parameter initializers by name (passes/export.py records them), because the sparsity work
  masks initializers by torch name. The optimizer would fold ``Transpose(weight)`` into a fresh
  constant and drop ``weight``, or drop an all-zero Conv bias input. For the duration of the
  optimization the parameters become plain graph inputs whose values it cannot see, so every
  node that reads a parameter still reads it afterwards.
"""

from __future__ import annotations

import logging

import onnx
import onnx_ir as ir
import onnxscript.optimizer

from sparsefuse.passes.export import read_param_map
from sparsefuse.passes.manager import PassContext


def cleanup(model: onnx.ModelProto, ctx: PassContext) -> onnx.ModelProto:
    """Fold constants and remove unused nodes/initializers, keeping parameter initializers."""
    keep = set(read_param_map(model).values())
    ir_model = ir.serde.deserialize_model(model)
    graph = ir_model.graph
    hidden = _hide_parameters(graph, keep)
    quiet = logging.getLogger("onnxscript")
    level = quiet.level
    quiet.setLevel(logging.ERROR)
    try:
        onnxscript.optimizer.optimize(ir_model)
    finally:
        quiet.setLevel(level)
        _restore_parameters(graph, hidden)
    out = ir.serde.serialize_model(ir_model)
    missing = keep - {init.name for init in out.graph.initializer}
    if missing:  # hidden values cannot be removed: this would be an optimizer bug
        raise RuntimeError(f"cleanup lost parameter initializers: {sorted(missing)[:5]}")
    ctx.log(f"cleanup kept all {len(keep)} parameter initializers")
    return out


def _hide_parameters(graph: ir.Graph, names: set[str]) -> list[tuple[ir.Value, ir.TensorProtocol | None]]:
    """Turn the named initializers into graph inputs with no known value."""
    hidden = []
    for name in [n for n in graph.initializers if n in names]:
        value = graph.initializers.pop(name)
        hidden.append((value, value.const_value))
        value.const_value = None
        graph.inputs.append(value)
    return hidden


def _restore_parameters(graph: ir.Graph, hidden: list[tuple[ir.Value, ir.TensorProtocol | None]]) -> None:
    for value, tensor in hidden:
        graph.inputs.remove(value)
        value.const_value = tensor
        graph.register_initializer(value)
