"""Apply a plan to an ONNX model with onnx-graphsurgeon: permuted and masked initializers by name.

Initializer names come from the export pass's param map (torch name -> initializer name, stored in
the model metadata) or equal the torch names. The same order as apply_torch: permutations first,
then the plan's reconstructed weights (OBS operator) replace their initializers, then every mask
computed from those weights, then multiplication. 2:4 layers are checked
after masking: every group of 4 along the reduction axis holds ≤ 2 nonzeros.
"""

from __future__ import annotations

import json
from collections.abc import Mapping

import numpy as np
import onnx
import onnx_graphsurgeon as gs
from onnx import numpy_helper

from sparsefuse.errors import SparsefuseError
from sparsefuse.passes.sparsity.patterns import nm_satisfied
from sparsefuse.passes.sparsity.plan import SparsityPlan, plan_masks

PARAM_MAP_KEY = "sparsefuse.param_map"  # written by passes/export.py


def param_map_of(model: onnx.ModelProto) -> dict[str, str]:
    for prop in model.metadata_props:
        if prop.key == PARAM_MAP_KEY:
            return dict(json.loads(prop.value))
    return {}


def apply_plan_onnx(
    model: onnx.ModelProto,
    plan: SparsityPlan,
    name_map: Mapping[str, str] | None = None,
) -> onnx.ModelProto:
    """A copy of ``model`` with the plan's permutations and masks applied to its initializers."""
    import torch

    mapping = dict(param_map_of(model)) | dict(name_map or {})
    graph = gs.import_onnx(model)
    consts = {name: t for name, t in graph.tensors().items() if isinstance(t, gs.Constant)}

    def const(torch_name: str) -> gs.Constant:
        onnx_name = mapping.get(torch_name, torch_name)
        if onnx_name not in consts:
            raise SparsefuseError(
                f"ONNX model has no initializer {onnx_name!r} (torch {torch_name!r})",
                "export the model with passes/export.py so parameters keep their names",
            )
        return consts[onnx_name]

    updated: dict[str, np.ndarray] = {}

    def values(torch_name: str) -> np.ndarray:
        onnx_name = mapping.get(torch_name, torch_name)
        return updated[onnx_name] if onnx_name in updated else np.asarray(const(torch_name).values)

    for layer in plan.layers:
        if layer.permutation:
            order = np.asarray(layer.permutation["order"], dtype=np.int64)
            for name, axis in layer.permutation["tensors"].items():
                updated[mapping.get(name, name)] = np.take(values(name), order, axis=int(axis))
    for name, value in (plan.reconstructed or {}).items():
        old = values(name)
        if tuple(old.shape) != tuple(value.shape):
            raise SparsefuseError(
                f"plan weights: {name} has shape {tuple(value.shape)}, "
                f"the initializer's is {tuple(old.shape)}",
                "apply the plan to the model it was made for",
            )
        updated[mapping.get(name, name)] = value.detach().cpu().numpy().astype(old.dtype)
    names = set()
    for layer in plan.layers:
        if layer.level > 0:  # every weight a mask is computed from must exist (const() says which not)
            names.add(layer.name)
            if layer.pattern == "channel" and layer.channel and "consumer" in layer.channel:
                names.add(layer.channel["consumer"])
    weights = {n: torch.from_numpy(np.array(values(n))) for n in names}
    for name, mask in plan_masks(plan, weights).items():
        v = values(name)
        updated[mapping.get(name, name)] = (v * mask.numpy().astype(v.dtype)).astype(v.dtype)
    for layer in plan.layers:
        if layer.pattern == "2:4" and layer.level > 0:
            if not nm_satisfied(torch.from_numpy(np.array(values(layer.name))), layer.in_axis):
                raise SparsefuseError(f"{layer.name}: 2:4 pattern violated after masking", "report this bug")
    # Write back into a copy of the original proto, so functions, metadata and opsets stay intact.
    out = onnx.ModelProto()
    out.CopyFrom(model)
    for init in out.graph.initializer:
        if init.name in updated:
            init.CopyFrom(numpy_helper.from_array(updated[init.name], init.name))
    missing = set(updated) - {init.name for init in out.graph.initializer}
    if missing:
        raise SparsefuseError(
            f"tensors {sorted(missing)[:3]} are constants, not graph initializers",
            "export without constant folding of parameters (passes/export.py)",
        )
    return out
