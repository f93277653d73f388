"""Calibration frames: how a frame is fed to the model, how outputs are flattened, synthetic frames.

A frame is a dict of tensors (or numpy arrays). The reference model takes ``model(images, points)``
(synthetic-benchmark frames also carry labels, which are ignored); any other model is called as
``model(**frame)``. Outputs may be a dict, a tuple or a tensor; they are
flattened to a name -> tensor dict (dict keys, or "out0", "out1", …).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch

from sparsefuse.spec import OutputSpec


def default_forward(model: torch.nn.Module, frame: Mapping[str, torch.Tensor]) -> Any:
    """One forward of ``model`` on one frame (batch size 1)."""
    if "images" in frame and "points" in frame:  # reference model; extra keys (labels) are ignored
        return model(torch.as_tensor(frame["images"]), torch.as_tensor(frame["points"]))
    return model(**frame)


def flatten_outputs(outputs: Any) -> dict[str, torch.Tensor]:
    """Name -> float tensor for every model output (non-float outputs are ignored)."""
    if isinstance(outputs, torch.Tensor):
        items = [("out0", outputs)]
    elif isinstance(outputs, Mapping):
        items = list(outputs.items())
    elif isinstance(outputs, Sequence):
        items = [(f"out{i}", t) for i, t in enumerate(outputs)]
    else:
        raise TypeError(f"unsupported model output type {type(outputs).__name__}")
    return {str(k): v for k, v in items if isinstance(v, torch.Tensor) and v.is_floating_point()}


def consumer_outputs(outputs: Any, transforms: Sequence[OutputSpec]) -> dict[str, torch.Tensor]:
    """The model's outputs as their consumers see them: each named by its spec (a dict by key, a
    tuple / tensor in spec order) and passed through its transform (sigmoid; softmax over
    ``axis``; "weighted": times the consumer-space value of ``weight_by``, reduced by max over
    ``axis`` where the channel counts differ; identity)."""
    if isinstance(outputs, Mapping):
        raw = {str(k): v for k, v in outputs.items()}
    else:
        items = [outputs] if isinstance(outputs, torch.Tensor) else list(outputs)
        raw = {spec.name: t for spec, t in zip(transforms, items, strict=False)}
    by_name = {spec.name: spec for spec in transforms}

    def seen(name: str, depth: int = 0) -> torch.Tensor:
        spec, x = by_name[name], raw[name]
        if spec.transform == "sigmoid":
            return torch.sigmoid(x)
        if spec.transform == "softmax":
            return torch.softmax(x, dim=spec.axis)
        if spec.transform == "weighted" and spec.weight_by and depth < len(by_name):
            weight = seen(spec.weight_by, depth + 1)
            if weight.shape[spec.axis] != x.shape[spec.axis]:
                weight = weight.amax(dim=spec.axis, keepdim=True)
            return x * weight
        return x

    return {name: seen(name) if name in by_name else t for name, t in raw.items()}


def consumer_forward(
    forward: Callable[[torch.nn.Module, Any], Any], transforms: Sequence[OutputSpec]
) -> Callable[[torch.nn.Module, Any], dict[str, torch.Tensor]]:
    """``forward`` whose outputs are in their consumers' space (:func:`consumer_outputs`): the
    sensitivity curves then measure distortion where it matters, not in logit cells no consumer
    sees (a -14 logit moving to -20 is invisible after a sigmoid)."""

    def run(model: torch.nn.Module, frame: Any) -> dict[str, torch.Tensor]:
        return consumer_outputs(forward(model, frame), transforms)

    return run


def synthetic_frames(
    template: Mapping[str, torch.Tensor], count: int, seed: int = 0
) -> list[dict[str, torch.Tensor]]:
    """Frames with the template's shapes, float tensors drawn uniformly between the template's
    per-last-dim min and max (points stay inside the LiDAR range, images in [0, 1]); other
    tensors are copied. RD-Prune's zero-data mode, adapted to structured multimodal inputs."""
    gen = torch.Generator().manual_seed(seed)
    frames = []
    for _ in range(count):
        frame = {}
        for name, value in template.items():
            t = torch.as_tensor(value)
            if not t.is_floating_point() or t.numel() == 0:
                frame[name] = t.clone()
                continue
            flat = t.reshape(-1, t.shape[-1]) if t.dim() > 1 else t.reshape(-1, 1)
            lo, hi = flat.min(dim=0).values, flat.max(dim=0).values
            u = torch.rand(flat.shape, generator=gen, dtype=t.dtype)
            frame[name] = (lo + u * (hi - lo)).reshape(t.shape)
        frames.append(frame)
    return frames
