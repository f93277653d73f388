"""The model spec: what sparsefuse needs to know about a model besides its weights.

A model is any ``torch.nn.Module`` whose forward takes named tensors. The spec names its inputs
(with their dtypes, ranks and dynamic axes), its outputs, and per output the transform its consumer
applies (the sparsity stage measures distortion after it). Presets carry a built-in spec; for a
user's model the spec is inferred from the forward's signature and sample frames, and any field
can be given explicitly (see docs/bring-your-own-model.md).

Pure data, no torch: every layer may import it.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from sparsefuse.errors import SparsefuseError

TRANSFORMS = ("identity", "sigmoid", "softmax", "weighted")
# Output names that usually hold logits: an "identity" transform on them earns a warning.
LOGIT_HINTS = ("logit", "heatmap", "hm", "cls", "score", "seg")
FLOAT_DTYPES = ("float16", "float32", "float64", "bfloat16")


@dataclass(frozen=True)
class InputSpec:
    """One forward argument. dtype: numpy dtype name the frames carry; rank: number of axes;
    dynamic: (axis, dim name) pairs whose size varies between frames (e.g. (0, "num_points")).
    Inputs with the same dim name must have equal sizes on that axis in every frame."""

    name: str
    dtype: str = "float32"
    rank: int | None = None
    dynamic: tuple[tuple[int, str], ...] = ()

    def dynamic_axes(self) -> dict[int, str]:
        return dict(self.dynamic)


@dataclass(frozen=True)
class OutputSpec:
    """One model output and the transform its consumer applies before using it.

    transform: "identity"; "sigmoid" (heatmaps, multi-label segmentation); "softmax" over ``axis``;
    "weighted": this output times the probability of output ``weight_by`` (its own transform
    applied, then the max over ``axis`` when the channel counts differ), e.g. box regression that
    only matters where the heatmap fires.
    """

    name: str
    transform: str = "identity"
    axis: int = 1
    weight_by: str | None = None


@dataclass(frozen=True)
class ModelSpec:
    """inputs/outputs in the forward's order; evaluate(outputs, frame) -> {metric: value} for
    accuracy gates (optional); modalities: (module path prefix, tag) pairs giving each layer its
    modality (camera, lidar, fusion, head; default "other"); label_keys: frame keys that are not
    forward arguments (labels for ``evaluate``), so frames may carry them."""

    inputs: tuple[InputSpec, ...]
    outputs: tuple[OutputSpec, ...]
    evaluate: Callable[[Mapping[str, Any], Mapping[str, Any]], dict[str, float]] | None = field(
        default=None, compare=False)
    modalities: tuple[tuple[str, str], ...] = ()
    label_keys: tuple[str, ...] = ()

    @property
    def input_names(self) -> tuple[str, ...]:
        return tuple(i.name for i in self.inputs)

    @property
    def output_names(self) -> tuple[str, ...]:
        return tuple(o.name for o in self.outputs)

    def output(self, name: str) -> OutputSpec:
        for out in self.outputs:
            if out.name == name:
                return out
        raise KeyError(name)

    def transforms(self) -> dict[str, OutputSpec]:
        return {o.name: o for o in self.outputs}

    def modality_of(self, path: str) -> str:
        """The tag of the longest matching module path prefix, else "other"."""
        best, tag = -1, "other"
        for prefix, name in self.modalities:
            if (path == prefix or path.startswith(prefix + ".") or not prefix) and len(prefix) > best:
                best, tag = len(prefix), name
        return tag

    def to_dict(self) -> dict[str, Any]:
        """JSON-able (the evaluate callback is named, not serialized)."""
        return {
            "inputs": [{"name": i.name, "dtype": i.dtype, "rank": i.rank,
                        "dynamic": {str(a): d for a, d in i.dynamic}} for i in self.inputs],
            "outputs": [{"name": o.name, "transform": o.transform, "axis": o.axis, "weight_by": o.weight_by}
                        for o in self.outputs],
            "evaluate": getattr(self.evaluate, "__qualname__", None) if self.evaluate else None,
            "modalities": {p: t for p, t in self.modalities},
            "label_keys": list(self.label_keys),
        }

    def with_outputs(self, **transforms: str | OutputSpec) -> ModelSpec:
        """A copy with some outputs' transforms replaced: ``spec.with_outputs(heatmap="sigmoid")``."""
        known = self.transforms()
        for name in transforms:
            if name not in known:
                raise SparsefuseError(f"the model has no output {name!r}",
                                      f"outputs are: {', '.join(self.output_names)}")
        outs = tuple(
            (transforms[o.name] if isinstance(transforms[o.name], OutputSpec)
             else replace(o, transform=str(transforms[o.name]))) if o.name in transforms else o
            for o in self.outputs)
        return validate_spec(replace(self, outputs=outs))  # type: ignore[arg-type]


def validate_spec(spec: ModelSpec) -> ModelSpec:
    """Checks names, transforms and references; SparsefuseError naming the field otherwise."""
    if not spec.inputs:
        raise SparsefuseError("the model spec has no inputs", "the forward must take at least one tensor")
    if not spec.outputs:
        raise SparsefuseError("the model spec has no outputs", "the forward must return tensors")
    for kind, names in (("input", spec.input_names), ("output", spec.output_names)):
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise SparsefuseError(f"duplicate {kind} names in the model spec: {', '.join(dupes)}",
                                  f"give every {kind} its own name")
        bad = [n for n in names if not n or not n.replace("_", "a").replace(".", "a").isalnum()]
        if bad:
            raise SparsefuseError(f"{kind} name {bad[0]!r} is not a plain identifier",
                                  "use letters, digits, '_' and '.' only")
    for item in spec.inputs:
        if item.rank is not None and any(not 0 <= a < item.rank for a, _ in item.dynamic):
            raise SparsefuseError(f"input {item.name!r} declares a dynamic axis outside its rank {item.rank}",
                                  "dynamic axes count from 0")
    names = set(spec.output_names)
    for out in spec.outputs:
        if out.transform not in TRANSFORMS:
            raise SparsefuseError(f"output {out.name!r} has unknown transform {out.transform!r}",
                                  f"choose one of: {', '.join(TRANSFORMS)}")
        if out.transform == "weighted" and (out.weight_by not in names or out.weight_by == out.name):
            raise SparsefuseError(f"output {out.name!r} is 'weighted' by {out.weight_by!r}, which is not "
                                  "another output", f"weight_by must name one of: {', '.join(sorted(names))}")
    return spec


def logit_like_identity_outputs(spec: ModelSpec) -> list[str]:
    """Outputs left at "identity" whose names suggest logits (worth a warning: distortion of raw
    logits is dominated by cells no consumer looks at)."""
    return [o.name for o in spec.outputs
            if o.transform == "identity" and any(h in o.name.lower() for h in LOGIT_HINTS)]
