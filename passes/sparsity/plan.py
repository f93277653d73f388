"""The plan artifact: sparsity/plan.json (+ curves.npz), applicable to torch and ONNX alike.

Masks are not stored: each is a deterministic function of the (possibly permuted) weight values and
the layer's (pattern, level), recomputed by apply_torch / apply_onnx from identical weights. What
must be replayed in order is stored: channel permutations (tensor name -> axis, order), then masks.

With the OBS operator the surviving weights of a reconstructed layer are new values, not a function of
the original weights: they are stored in ``weights.safetensors`` next to plan.json (by parameter name,
in the permuted layout) and named by ``weights_file``. Order: permutations, then the stored weights
replace the originals, then the masks are recomputed from them (the stored weights already hold the
zeros, so masking leaves them unchanged). A plan without ``weights_file`` is pure masking.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from sparsefuse.atomic import atomic_path, write_json
from sparsefuse.errors import SparsefuseError
from sparsefuse.passes.sparsity.candidates import DENSE
from sparsefuse.passes.sparsity.patterns import filter_mask, nm_mask, unstructured_mask

SCHEMA_VERSION = 1
WEIGHTS_FILE = "weights.safetensors"


@dataclass(frozen=True)
class LayerPlan:
    name: str
    kind: str
    modality: str
    shape: list[int]
    pattern: str
    level: float
    params: int
    params_kept: int
    flops: float
    flops_kept: float
    distortion: float
    lam: float
    delta: float
    cost: float
    nm_valid: bool
    nm_recommended: bool
    nm_reason: str
    in_axis: int
    out_axis: int
    channel: dict | None = None  # {"consumer": name, "tensors": {name: axis}} or {"refused": reason}
    permutation: dict | None = None  # {"order": [...], "tensors": {name: axis}}


@dataclass(frozen=True)
class SparsityPlan:
    allocator: str
    pattern: str
    budget_kind: str
    budget_fraction: float
    budget_total: float
    dense_total: float
    achieved_total: float
    achieved_fraction: float
    achieved_sparsity: float
    beta: float
    modality_weights: dict[str, float]
    regularizer: str
    normalizers: dict[str, float]
    dp: dict[str, Any] | None
    forward_counts: dict[str, float]
    sensitivity_seconds: float
    site_lambda: dict[str, float]
    layers: list[LayerPlan]
    config: dict[str, Any] = field(default_factory=dict)
    schema_version: int = SCHEMA_VERSION
    weights_file: str | None = None  # relative to plan.json; None: no reconstructed weights
    # Name -> reconstructed weight (loaded from weights_file; not part of plan.json).
    reconstructed: dict[str, torch.Tensor] | None = field(default=None, compare=False, repr=False)

    def to_json(self) -> dict[str, Any]:
        out = asdict(replace(self, reconstructed=None))
        out.pop("reconstructed")
        return out

    @staticmethod
    def from_json(obj: Mapping[str, Any]) -> SparsityPlan:
        if obj.get("schema_version") != SCHEMA_VERSION:
            raise SparsefuseError(
                f"plan schema_version {obj.get('schema_version')} is not {SCHEMA_VERSION}",
                "re-run sparsefuse prune with this version",
            )
        data = dict(obj)
        data.pop("reconstructed", None)
        data["layers"] = [LayerPlan(**layer) for layer in obj["layers"]]
        return SparsityPlan(**data)


def write_plan(plan: SparsityPlan, out_dir: str | Path) -> Path:
    return write_json(Path(out_dir) / "plan.json", plan.to_json())


def read_plan(path: str | Path) -> SparsityPlan:
    """plan.json, with its reconstructed weights loaded when it names a weights file."""
    try:
        plan = SparsityPlan.from_json(json.loads(Path(path).read_text()))
    except (OSError, json.JSONDecodeError, TypeError) as exc:
        raise SparsefuseError(f"cannot read plan {path}: {exc}", "point at a sparsity/plan.json") from None
    if plan.weights_file:
        plan = replace(plan, reconstructed=read_weights(Path(path).parent / plan.weights_file))
    return plan


def write_weights(tensors: Mapping[str, torch.Tensor], out_dir: str | Path) -> Path:
    """weights.safetensors: name -> reconstructed weight, written atomically."""
    from safetensors.torch import save_file

    dest = Path(out_dir) / WEIGHTS_FILE
    dest.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(dest) as tmp:
        save_file({n: t.detach().cpu().contiguous() for n, t in tensors.items()}, str(tmp))
    return dest


def read_weights(path: str | Path) -> dict[str, torch.Tensor]:
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        return dict(load_file(str(path)))
    except (SafetensorError, OSError) as exc:
        raise SparsefuseError(
            f"cannot read the plan's reconstructed weights {path}: {exc}",
            "keep weights.safetensors next to plan.json (the OBS operator writes both)",
        ) from None


def write_curves(
    out_dir: str | Path,
    names: list[str],
    levels: list[list[float]],
    distortion: list[list[float]],
    lam: list[list[float]],
    costs: list[list[float]],
) -> Path:
    """curves.npz: ragged per-layer arrays stored padded with NaN, [L, Kmax]."""
    kmax = max((len(r) for r in levels), default=0)

    def pad(rows):
        arr = np.full((len(rows), kmax), np.nan)
        for i, r in enumerate(rows):
            arr[i, : len(r)] = r
        return arr

    dest = Path(out_dir) / "curves.npz"
    with atomic_path(dest) as tmp:
        with open(tmp, "wb") as handle:
            np.savez(
                handle,
                names=np.array(names),
                levels=pad(levels),
                distortion=pad(distortion),
                lam=pad(lam),
                cost=pad(costs),
            )
    return dest


def layer_masks(
    layer: LayerPlan, weights: Mapping[str, torch.Tensor | np.ndarray]
) -> dict[str, torch.Tensor]:
    """Masks (True = kept) for one layer's decision, recomputed from the (permuted) weights."""
    if layer.pattern == DENSE or layer.level == 0:
        return {}
    w = torch.as_tensor(np.asarray(weights[layer.name]))
    if layer.pattern == "unstructured":
        return {layer.name: unstructured_mask(w, layer.level)}
    if layer.pattern == "2:4":
        return {layer.name: nm_mask(w, layer.in_axis)}
    if layer.pattern == "channel":
        if not layer.channel or "consumer" not in layer.channel:
            raise SparsefuseError(
                f"plan: channel decision for {layer.name} has no chain", "regenerate the plan"
            )
        keep = filter_mask(w, layer.out_axis, layer.level)
        out = {}
        for name, axis in layer.channel["tensors"].items():
            if name in (layer.name, layer.channel["consumer"]):
                shape = tuple(np.asarray(weights[name]).shape)
                view = [1] * len(shape)
                view[axis] = shape[axis]
                out[name] = keep.view(view).expand(shape).clone()
        return out
    raise SparsefuseError(f"plan: unknown pattern {layer.pattern!r} for {layer.name}", "regenerate the plan")


def plan_masks(
    plan: SparsityPlan, weights: Mapping[str, torch.Tensor | np.ndarray]
) -> dict[str, torch.Tensor]:
    """All masks of a plan, AND-ed where a weight is touched twice (own decision + consumer)."""
    out: dict[str, torch.Tensor] = {}
    for layer in plan.layers:
        for name, mask in layer_masks(layer, weights).items():
            out[name] = mask if name not in out else out[name] & mask
    return out
