"""The strongly typed FP16 pass: float tensors and initializers become FP16 except in the FP32
islands (islands.py), with one Cast at each island boundary; graph inputs and outputs stay FP32
(a Cast at each edge) so that verify compares like for like.

``ctx.options["fp16"]["fp32_nodes"]``: names of the nodes that stay FP32.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from sparsefuse.passes.manager import PassContext
from sparsefuse.passes.precision.capture import tensor_types
from sparsefuse.passes.precision.edit import default_opset, insert_nodes
from sparsefuse.passes.precision.islands import float_inputs

F32, F16 = TensorProto.FLOAT, TensorProto.FLOAT16


def to_fp16(model: onnx.ModelProto, ctx: PassContext) -> onnx.ModelProto:
    """The pass (see the module docstring)."""
    from sparsefuse.plugins import onnx_ops

    onnx_ops.register_schemas()
    fp32_nodes = set(ctx.options["fp16"]["fp32_nodes"])
    types = tensor_types(model)
    opset = default_opset(model)
    out = onnx.ModelProto()
    out.CopyFrom(model)
    graph = out.graph
    # What each consumer wants of each float input: FP16 for an FP16 node's type-following inputs.
    wants: list[tuple[onnx.NodeProto, int, int]] = []
    for node in graph.node:
        picked = float_inputs(node, types, opset) if node.name not in fp32_nodes else []
        for i, name in enumerate(node.input):
            if name and types.get(name) == F32:
                wants.append((node, i, F16 if i in picked else F32))
    half_nodes = {node.name for node, _, want in wants if want == F16}
    new_type = dict(types)
    for node in graph.node:
        if node.name in half_nodes:
            for name in node.output:
                if new_type.get(name) == F32:
                    new_type[name] = F16
    casts: dict[str, list[onnx.NodeProto]] = {}
    made: dict[tuple[str, int], str] = _convert_initializers(graph, wants, new_type)
    for node, i, want in wants:
        name = node.input[i]
        if new_type.get(name) == want:
            continue
        key = (name, want)
        if key not in made:
            made[key] = f"{name}__to_{'fp16' if want == F16 else 'fp32'}"
            casts.setdefault(name, []).append(helper.make_node("Cast", [name], [made[key]], to=want,
                                                               name=f"{made[key]}__Cast"))
        node.input[i] = made[key]
    _cast_outputs(graph, new_type, casts)
    insert_nodes(graph, casts)
    del graph.value_info[:]  # stale element types: shape inference recomputes them
    ctx.log(f"fp16: {len(half_nodes)} nodes FP16, {len(fp32_nodes)} FP32, "
            f"{sum(len(v) for v in casts.values())} casts")
    return out


def _convert_initializers(graph: onnx.GraphProto, wants: list[tuple[onnx.NodeProto, int, int]],
                          new_type: dict[str, int]) -> dict[tuple[str, int], str]:
    """An FP32 initializer every consumer wants in FP16 is stored in FP16; one that FP16 and FP32
    nodes both read gets an FP16 copy (constants need no runtime Cast). Returns {(name, F16): copy}."""
    wanted: dict[str, set[int]] = {}
    for node, i, want in wants:
        wanted.setdefault(node.input[i], set()).add(want)
    outputs = {o.name for o in graph.output}
    copies: dict[tuple[str, int], str] = {}
    for index, init in enumerate(list(graph.initializer)):
        if init.data_type != F32 or F16 not in wanted.get(init.name, set()) or init.name in outputs:
            continue
        half = numpy_helper.to_array(init).astype(np.float16)
        if wanted[init.name] == {F16}:
            graph.initializer[index].CopyFrom(numpy_helper.from_array(half, init.name))
            new_type[init.name] = F16
        else:
            copies[(init.name, F16)] = f"{init.name}__fp16"
            graph.initializer.append(numpy_helper.from_array(half, copies[(init.name, F16)]))
    return copies


def _cast_outputs(graph: onnx.GraphProto, new_type: dict[str, int],
                  casts: dict[str, list[onnx.NodeProto]]) -> None:
    """Graph outputs produced in FP16: the producer writes ``<name>__fp16``, a Cast the FP32 output."""
    for output in graph.output:
        name = output.name
        if new_type.get(name) != F16:
            continue
        half = f"{name}__fp16"
        for node in graph.node:
            node.output[:] = [half if o == name else o for o in node.output]
            node.input[:] = [half if o == name else o for o in node.input]
        for cast in (c for cs in casts.values() for c in cs):
            cast.input[:] = [half if o == name else o for o in cast.input]
        moved = casts.pop(name, [])
        casts.setdefault(half, []).extend([*moved, helper.make_node("Cast", [half], [name], to=F32,
                                                                    name=f"{name}__Cast")])
