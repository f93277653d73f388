"""ONNX facade of the custom ops: schemas, export translations, FunctionProto bodies.

- ``register_schemas()`` before ``torch.onnx.export(dynamo=True)``;
- ``custom_translation_table()`` for its ``custom_translation_table=`` argument;
- ``attach_functions(model)`` so that ONNX Runtime (CPU, no plugin) runs our nodes;
- ``strip_functions(model)`` for TensorRT, whose plugins implement the nodes.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from types import SimpleNamespace

import numpy as np
import onnx
from onnx import helper

from sparsefuse.errors import SparsefuseError
from sparsefuse.plugins.bev_pool import export as bev_pool_export
from sparsefuse.plugins.bev_pool import function as bev_pool_function
from sparsefuse.plugins.bev_pool import schema as bev_pool_schema
from sparsefuse.plugins.common import DOMAIN, OPSET_VERSION
from sparsefuse.plugins.onnx_helpers import MIN_BODY_OPSET
from sparsefuse.plugins.scatter_dense import export as scatter_dense_export
from sparsefuse.plugins.scatter_dense import function as scatter_dense_function
from sparsefuse.plugins.scatter_dense import schema as scatter_dense_schema
from sparsefuse.plugins.sparse_conv3d import export as sparse_conv3d_export
from sparsefuse.plugins.sparse_conv3d import function as sparse_conv3d_function
from sparsefuse.plugins.sparse_conv3d import schema as sparse_conv3d_schema
from sparsefuse.plugins.sparse_inverse_conv3d import export as sparse_inverse_conv3d_export
from sparsefuse.plugins.sparse_inverse_conv3d import function as sparse_inverse_conv3d_function
from sparsefuse.plugins.sparse_inverse_conv3d import schema as sparse_inverse_conv3d_schema
from sparsefuse.plugins.voxelize import export as voxelize_export
from sparsefuse.plugins.voxelize import function as voxelize_function
from sparsefuse.plugins.voxelize import schema as voxelize_schema

# IR version our models need: model-local functions with attribute defaults (IR >= 9); ORT 1.31
# reads up to IR 13.
MIN_IR_VERSION = 10


def _op(schema, function, export) -> SimpleNamespace:
    return SimpleNamespace(
        spec=schema.SPEC,
        register_schema=schema.register_schema,
        function_proto=function.function_proto,
        translation_table=export.translation_table,
    )


OPS = {
    voxelize_schema.OP_TYPE: _op(voxelize_schema, voxelize_function, voxelize_export),
    sparse_conv3d_schema.OP_TYPE: _op(sparse_conv3d_schema, sparse_conv3d_function, sparse_conv3d_export),
    sparse_inverse_conv3d_schema.OP_TYPE: _op(
        sparse_inverse_conv3d_schema, sparse_inverse_conv3d_function, sparse_inverse_conv3d_export
    ),
    scatter_dense_schema.OP_TYPE: _op(scatter_dense_schema, scatter_dense_function, scatter_dense_export),
    bev_pool_schema.OP_TYPE: _op(bev_pool_schema, bev_pool_function, bev_pool_export),
}


def register_schemas() -> None:
    """Register the OpSchemas (domain "sparsefuse", version 1) with onnx.defs; idempotent."""
    for op in OPS.values():
        op.register_schema()


def custom_translation_table() -> dict[Callable, Callable]:
    """``{torch.ops.sparsefuse.<op>.default: translation}`` for all the ops (registers the schemas)."""
    table: dict[Callable, Callable] = {}
    for op in OPS.values():
        table.update(op.translation_table())
    return table


def function_protos(
    opset: int = MIN_BODY_OPSET, op_types: set[str] | None = None
) -> list[onnx.FunctionProto]:
    """FunctionProtos of the ops (all, or ``op_types``), bodies in the standard domain at ``opset``."""
    if opset < MIN_BODY_OPSET:
        raise ValueError(f"function bodies need opset >= {MIN_BODY_OPSET}, got {opset}")
    names = sorted(OPS) if op_types is None else sorted(op_types)
    return [OPS[name].function_proto(opset) for name in names]


def _nodes(graph: onnx.GraphProto) -> Iterator[onnx.NodeProto]:
    """Every node of ``graph``, including those of subgraphs (If / Loop / Scan bodies)."""
    for node in graph.node:
        yield node
        for attr in node.attribute:
            if attr.type == onnx.AttributeProto.GRAPH:
                yield from _nodes(attr.g)
            elif attr.type == onnx.AttributeProto.GRAPHS:
                for sub in attr.graphs:
                    yield from _nodes(sub)


def custom_op_types(model: onnx.ModelProto) -> set[str]:
    """Op types of the nodes in domain "sparsefuse" (main graph and subgraphs)."""
    return {node.op_type for node in _nodes(model.graph) if node.domain == DOMAIN}


def _default_opset(model: onnx.ModelProto) -> int | None:
    return next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), None)


def _set_opset(model: onnx.ModelProto, domain: str, version: int) -> None:
    for entry in model.opset_import:
        if entry.domain == domain:
            entry.version = version
            return
    model.opset_import.append(helper.make_opsetid(domain, version))


def strip_functions(model: onnx.ModelProto) -> onnx.ModelProto:
    """A copy of ``model`` without our FunctionProtos (the nodes stay, for the TensorRT plugins)."""
    out = onnx.ModelProto()
    out.CopyFrom(model)
    kept = [f for f in out.functions if f.domain != DOMAIN]
    del out.functions[:]
    out.functions.extend(kept)
    return out


def attach_functions(model: onnx.ModelProto) -> onnx.ModelProto:
    """A copy of ``model`` carrying the FunctionProtos of the custom op types it uses.

    Also adds the opset_import ("sparsefuse", 1), builds the bodies at the model's standard opset
    (which must be >= 18; an older model is upgraded with onnx's version converter) and raises the
    IR version to at least 10. Attaching twice replaces the earlier bodies.
    """
    used = custom_op_types(model)
    unknown = sorted(used - set(OPS))
    if unknown:
        raise SparsefuseError(
            f"the model uses unknown {DOMAIN} op types {unknown}",
            hint=f"known op types: {sorted(OPS)}",
        )
    out = strip_functions(model)
    sparse_conv3d_function.list_num_out(_nodes(out.graph))  # ORT: nodes list every function output
    voxelize_function.list_num_points(_nodes(out.graph))
    if used:
        _set_opset(out, DOMAIN, OPSET_VERSION)
    opset = _default_opset(out)
    if opset is None:
        _set_opset(out, "", MIN_BODY_OPSET)
        opset = MIN_BODY_OPSET
    elif opset < MIN_BODY_OPSET:
        out = _upgrade(out, opset)
        opset = MIN_BODY_OPSET
    if used:
        out.functions.extend(function_protos(opset, used))
    out.ir_version = max(out.ir_version, MIN_IR_VERSION)
    return out


def _upgrade(model: onnx.ModelProto, opset: int) -> onnx.ModelProto:
    from onnx import version_converter

    register_schemas()
    try:
        return version_converter.convert_version(model, MIN_BODY_OPSET)
    except Exception as exc:  # the converter raises bare RuntimeErrors / ConvertErrors
        raise SparsefuseError(
            f"the model uses ONNX opset {opset}; the {DOMAIN} function bodies need opset >= {MIN_BODY_OPSET} "
            f"and the version converter failed: {exc}",
            hint=f"export with opset_version >= {MIN_BODY_OPSET}",
        ) from exc


def single_node_model(
    op_type: str,
    inputs: Mapping[str, np.ndarray | None],
    attributes: Mapping[str, object],
    opset: int = MIN_BODY_OPSET,
) -> onnx.ModelProto:
    """A one-node model ``sparsefuse::<op_type>`` with its FunctionProto attached, for tests and repros.

    ``inputs``: formal input name -> example array (fixes dtype and rank; dims become symbolic) or
    None for an omitted optional input. ``attributes``: node attributes (bool -> INT 0/1).
    """
    spec = OPS[op_type].spec
    names, infos = [], []
    for name, _ in spec.inputs:
        value = inputs.get(name)
        names.append("" if value is None else name)
        if value is not None:
            dims = [f"{name}_{i}" for i in range(value.ndim)]
            elem = helper.np_dtype_to_tensor_dtype(value.dtype)
            infos.append(helper.make_tensor_value_info(name, elem, dims))
    while names and not names[-1]:
        names.pop()
    attrs = {k: int(v) if isinstance(v, bool) else v for k, v in attributes.items()}
    outs = [name for name, _ in spec.outputs]
    node = helper.make_node(op_type, names, outs, domain=DOMAIN, **attrs)
    graph = helper.make_graph([node], op_type, infos, [onnx.ValueInfoProto(name=n) for n in outs])
    model = attach_functions(
        helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)], ir_version=MIN_IR_VERSION)
    )
    # Output types and ranks from ONNX shape inference through the function body.
    # (onnx puts them in value_info or, sometimes, straight into graph.output.)
    graph = onnx.shape_inference.infer_shapes(model, strict_mode=True).graph
    inferred = {v.name: v for v in [*graph.value_info, *graph.output] if v.type.HasField("tensor_type")}
    for out in model.graph.output:
        out.CopyFrom(inferred[out.name])
    return model
