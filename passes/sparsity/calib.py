"""Calibration frames: how a frame is fed to the model, how outputs are flattened, synthetic frames.

A frame is a dict of tensors (or numpy arrays). The reference model takes ``model(images, points)``
(synthetic-benchmark frames also carry labels, which are ignored); any other model is called as
``model(**frame)``. Outputs may be a dict, a tuple or a tensor; they are
flattened to a name -> tensor dict (dict keys, or "out0", "out1", …).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch


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
