"""Training, evaluation, fine-tuning with frozen sparsity masks, and safetensors checkpoints.

Frames are the dicts of models/synthetic (or models/nuscenes): ``images``, ``points``, ``gt_boxes``,
``gt_labels``, ``seg_masks``. Batch size 1, CPU. Run with ``torch.set_num_threads(1)`` on a
shared machine: scatter-heavy sparse ops get much slower with contended OpenMP threads.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from sparsefuse.atomic import atomic_path
from sparsefuse.errors import SparsefuseError
from sparsefuse.models import losses
from sparsefuse.models.metrics import DetectionAccumulator, IoUAccumulator, decode
from sparsefuse.models.synthetic.labels import BevGrid, detection_targets
from sparsefuse.models.synthetic.scene import CLASS_NAMES, SEG_CLASSES

MODES = ("full", "camera_only", "lidar_only")  # camera_only: LiDAR emptied; lidar_only: cameras blanked
SEG_POS_WEIGHT = (1.0, 3.0, 3.0, 5.0, 3.0)  # rare object classes get more weight on their positives

Frame = dict[str, np.ndarray]


@dataclass(frozen=True)
class TrainConfig:
    steps: int = 800
    lr: float = 2e-3  # peak of the one-cycle schedule
    weight_decay: float = 1e-4
    seed: int = 0
    drop_camera: float = 0.15  # probability a step sees blanked cameras (modality dropout)
    drop_lidar: float = 0.15  # probability a step sees no LiDAR points
    grad_clip: float = 5.0
    log_every: int = 25
    depth_weight: float = 1.0  # LiDAR depth supervision of the camera depth net (BEVDepth); 0 = off
    semantic_weight: float = 0.0  # image semantics from LiDAR-projected labels (auxiliary head); 0 = off


# ---------------------------------------------------------------- data plumbing


def model_grid(model: nn.Module) -> BevGrid:
    """The output BEV grid of a reference model (its rig's bev_range / bev_cell)."""
    rig = model.rig
    return BevGrid(rig.bev_range[0], rig.bev_range[1], rig.bev_cell, rig.bev_shape)


def frame_targets(frame: Frame, grid: BevGrid) -> dict[str, torch.Tensor]:
    """Training targets of one frame on ``grid``: seg masks, CenterPoint heatmap, box targets."""
    det = detection_targets(np.asarray(frame["gt_boxes"], np.float64), frame["gt_labels"], grid)
    return {
        "seg_masks": torch.from_numpy(np.asarray(frame["seg_masks"], np.float32)),
        "seg_pos_weight": torch.tensor(SEG_POS_WEIGHT),
        "heatmap": torch.from_numpy(det.heatmap),
        "boxes": torch.from_numpy(det.boxes),
        "box_mask": torch.from_numpy(det.mask),
    }


def depth_supervision(model: nn.Module) -> tuple[nn.Module, int] | None:
    """(LSS depth net, camera feature stride) of a reference model, or None for a model without one."""
    depth_net = getattr(getattr(model, "camera", None), "depth_net", None)
    if depth_net is None or not hasattr(model, "preset_name"):
        return None
    from sparsefuse.models.presets import get_preset

    return depth_net, get_preset(model.preset_name).feature_stride


def depth_target(frame: Frame, model: nn.Module) -> torch.Tensor | None:
    """Depth-bin target [Ncam, H', W'] of ``frame``'s LiDAR for ``model``'s depth net (or None)."""
    found = depth_supervision(model)
    if found is None:
        return None
    from sparsefuse.models.geometry import depth_bin_targets

    return torch.from_numpy(depth_bin_targets(np.asarray(frame["points"]), model.rig, found[1]))


def semantic_target(frame: Frame, model: nn.Module) -> torch.Tensor | None:
    """Class [Ncam, H', W'] (point_classes: 0 ground, 1 + label, then "other object") of the nearest
    LiDAR point seen through each camera feature pixel, -1 where none or where that point lies
    beyond the BEV grid (labels stop there); None without a depth net."""
    found = depth_supervision(model)
    if found is None:
        return None
    from sparsefuse.models.geometry import nearest_points
    from sparsefuse.models.synthetic.labels import point_classes

    points = np.asarray(frame["points"])
    index, _ = nearest_points(points, model.rig, found[1])
    classes = point_classes(points, np.asarray(frame["gt_boxes"]), np.asarray(frame["gt_labels"]))
    classes[~model_grid(model).contains(points[:, :2])] = -1  # objects beyond the grid are unlabelled
    return torch.from_numpy(np.where(index >= 0, classes[np.maximum(index, 0)], -1))


def semantic_head(model: nn.Module) -> nn.Conv2d | None:
    """Training-only 1x1 conv: camera context [Ncam, C, H', W'] -> class logits [Ncam, K, H', W'].
    It is not part of the model (nor of its checkpoint or ONNX graph); it makes the lifted camera
    features carry what the object is."""
    found = depth_supervision(model)
    if found is None:
        return None
    depth_net = found[0]
    return nn.Conv2d(depth_net.out.out_channels - depth_net.depth_bins, 2 + len(CLASS_NAMES), 1)


@contextmanager
def captured_camera(model: nn.Module) -> Iterator[dict[str, torch.Tensor]]:
    """Record the depth softmax [Ncam, D, H', W'] ("depth") and the context features [Ncam, C, H', W']
    ("context") of the forward passes run inside the block."""
    store: dict[str, torch.Tensor] = {}
    found = depth_supervision(model)
    if found is None:
        yield store
        return

    def hook(module: nn.Module, args: tuple, output: tuple[torch.Tensor, torch.Tensor]) -> None:
        store["depth"], store["context"] = output

    handle = found[0].register_forward_hook(hook)
    try:
        yield store
    finally:
        handle.remove()


def step_loss(
    model: nn.Module,
    frame: Frame,
    targets: dict[str, torch.Tensor],
    mode: str = "full",
    depth_weight: float = 1.0,
    semantics: nn.Module | None = None,
    semantic_weight: float = 0.0,
) -> tuple[torch.Tensor, dict[str, float]]:
    """Training loss of one frame in ``mode``. Adds ``depth_weight`` x the depth loss when ``targets``
    has "depth", and ``semantic_weight`` x the image semantic loss of the ``semantics`` head when it
    has "semantic"; neither when the cameras are blanked (a blank image has nothing to learn)."""
    with captured_camera(model) as seen:
        outputs = model(*sensor_inputs(frame, mode))
    blanked = mode == "lidar_only" or not seen
    depth = None if blanked else seen["depth"]
    sem = None if blanked or semantics is None else semantics(seen["context"])
    weights = losses.LossWeights(depth=depth_weight, semantic=semantic_weight)
    return losses.total_loss(outputs, targets, weights, depth, sem)


def _with_camera_targets(
    targets: dict[str, torch.Tensor],
    frame: Frame,
    model: nn.Module,
    depth_weight: float,
    semantic_weight: float,
) -> dict:
    """``targets`` plus the depth / semantic targets whose weight is > 0 (models with a depth net)."""
    extra = {
        "depth": depth_target(frame, model) if depth_weight > 0 else None,
        "semantic": semantic_target(frame, model) if semantic_weight > 0 else None,
    }
    return {**targets, **{k: v for k, v in extra.items() if v is not None}}


def synthetic_frames(
    model: nn.Module, seeds: Iterable[int], cache_dir: str | Path | None = None, workers: int = 1
) -> list[Frame]:
    """Synthetic frames for ``model``'s rig (e.g. for ``finetune`` or ``evaluate``); cached as .npz
    in ``cache_dir`` when given. Training used seeds 0..599; 100000.. are held out."""
    from sparsefuse.models.synthetic.dataset import cached_frames, generate_frames

    seeds = [int(s) for s in seeds]
    if cache_dir is None:
        return generate_frames(seeds, model.rig, workers=workers)
    return cached_frames(seeds, model.rig, cache_dir, workers=workers)


def sensor_inputs(frame: Frame, mode: str = "full") -> tuple[torch.Tensor, torch.Tensor]:
    """(images, points) tensors; ``camera_only`` empties the LiDAR, ``lidar_only`` blanks the cameras."""
    if mode not in MODES:
        raise SparsefuseError(f"unknown evaluation mode {mode!r}", f"choose one of: {', '.join(MODES)}")
    images = torch.from_numpy(np.asarray(frame["images"], np.float32))
    points = torch.from_numpy(np.asarray(frame["points"], np.float32))
    if mode == "lidar_only":
        images = torch.zeros_like(images)
    elif mode == "camera_only":
        points = points[:0]
    return images, points


# ---------------------------------------------------------------- training


def train(
    model: nn.Module, frames: list[Frame], config: TrainConfig, log: Callable[[str], None] | None = None
) -> list[dict[str, float]]:
    """Train ``model`` in place on ``frames`` (shuffled epochs, batch 1, modality dropout).

    AdamW with a one-cycle LR schedule; returns the per-step loss history.
    """
    grid = model_grid(model)
    rng = np.random.default_rng(config.seed)
    torch.manual_seed(config.seed)
    semantics = semantic_head(model) if config.semantic_weight > 0 else None
    params = [*model.parameters(), *(semantics.parameters() if semantics is not None else ())]
    opt = torch.optim.AdamW(params, lr=config.lr, weight_decay=config.weight_decay)
    sched = torch.optim.lr_scheduler.OneCycleLR(
        opt, max_lr=config.lr, total_steps=config.steps, pct_start=0.1
    )
    targets: dict[int, dict[str, torch.Tensor]] = {}
    order = np.concatenate(
        [rng.permutation(len(frames)) for _ in range(math.ceil(config.steps / len(frames)))]
    )
    history: list[dict[str, float]] = []
    model.train()
    start = time.perf_counter()
    for step in range(config.steps):
        idx = int(order[step])
        roll = rng.random()
        mode = (
            "lidar_only"
            if roll < config.drop_camera
            else ("camera_only" if roll < config.drop_camera + config.drop_lidar else "full")
        )
        if idx not in targets:
            frame = frames[idx]
            targets[idx] = _with_camera_targets(
                frame_targets(frame, grid), frame, model, config.depth_weight, config.semantic_weight
            )
        loss, parts = step_loss(
            model, frames[idx], targets[idx], mode, config.depth_weight, semantics, config.semantic_weight
        )
        opt.zero_grad(set_to_none=True)
        loss.backward()
        nn.utils.clip_grad_norm_(params, config.grad_clip)
        opt.step()
        sched.step()
        history.append({"loss": float(loss.detach()), **parts})
        if log and (step + 1) % config.log_every == 0:
            recent = history[-config.log_every :]
            keys = dict.fromkeys(k for h in recent for k in h)  # depth is absent on camera-blanked steps
            mean = {k: float(np.mean([h[k] for h in recent if k in h])) for k in keys}
            log(
                f"step {step + 1}/{config.steps} {time.perf_counter() - start:.0f}s "
                + " ".join(f"{k}={v:.4f}" for k, v in mean.items())
            )
    model.eval()
    return history


# ---------------------------------------------------------------- evaluation


@torch.no_grad()
def evaluate(model: nn.Module, frames: Iterable[Frame], mode: str = "full") -> dict:
    """BEV IoU per class + mIoU and centre-distance AP per class + mAP (models/metrics.py)."""
    grid = model_grid(model)
    rig = model.rig
    ious = IoUAccumulator(len(SEG_CLASSES))
    dets = DetectionAccumulator(len(CLASS_NAMES))
    model.eval()
    count = 0
    for frame in frames:
        seg, heat, boxes = model(*sensor_inputs(frame, mode))
        ious.add(seg, frame["seg_masks"])
        dets.add(decode(heat, boxes, rig.bev_range, grid.cell), frame["gt_boxes"], frame["gt_labels"])
        count += 1
    iou, ap = ious.iou(), dets.ap()
    return {
        "mode": mode,
        "frames": count,
        "mIoU": float(np.nanmean(iou)),
        "iou": {name: float(v) for name, v in zip(SEG_CLASSES, iou, strict=True)},
        "mAP": dets.mean_ap(),
        "ap": {
            name: float(np.nanmean(row)) if np.isfinite(row).any() else float("nan")
            for name, row in zip(CLASS_NAMES, ap, strict=True)
        },
        "num_gt": {name: int(n) for name, n in zip(CLASS_NAMES, dets.num_gt, strict=True)},
    }


# ---------------------------------------------------------------- fine-tuning with frozen masks


def apply_masks(model: nn.Module, masks: dict[str, torch.Tensor]) -> None:
    """Zero every weight whose mask entry is False (masks: parameter name -> bool tensor, same shape)."""
    params = dict(model.named_parameters())
    with torch.no_grad():
        for name, mask in masks.items():
            params[name].mul_(mask.to(params[name].dtype))


def _check_masks(model: nn.Module, masks: dict[str, torch.Tensor]) -> None:
    params = dict(model.named_parameters())
    for name, mask in masks.items():
        if name not in params:
            raise SparsefuseError(
                f"mask for unknown parameter {name!r}",
                "key masks by model.named_parameters() names (e.g. from plan.json)",
            )
        if tuple(mask.shape) != tuple(params[name].shape):
            raise SparsefuseError(
                f"mask for {name!r} has shape {tuple(mask.shape)}, "
                f"the weight has {tuple(params[name].shape)}",
                "build the mask from that weight",
            )


def finetune(
    model: nn.Module,
    frames: list[Frame],
    masks: dict[str, torch.Tensor],
    steps: int,
    lr: float = 5e-4,
    seed: int = 0,
    log: Callable[[str], None] | None = None,
    depth_weight: float = 1.0,
) -> list[float]:
    """Recover a pruned model (MMPrune4U Algorithm 1, recovery step): Adam on the training loss
    (with the same LiDAR depth supervision as ``train``; ``depth_weight`` 0 turns it off),
    re-applying the frozen masks (True = keep) after every optimizer step, so pruned weights stay
    exactly zero. Frames are cycled in a seeded shuffled order. Returns the loss of each step.
    The model is left in eval mode.
    """
    if steps < 1 or not frames:
        raise SparsefuseError("finetune needs at least one step and one frame", "pass steps >= 1 and frames")
    _check_masks(model, masks)
    grid = model_grid(model)
    rng = np.random.default_rng(seed)
    order = np.concatenate([rng.permutation(len(frames)) for _ in range(math.ceil(steps / len(frames)))])
    targets = [_with_camera_targets(frame_targets(f, grid), f, model, depth_weight, 0.0) for f in frames]
    apply_masks(model, masks)
    opt = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=lr)
    model.train()
    history = []
    for step in range(steps):
        idx = int(order[step])
        loss, _ = step_loss(model, frames[idx], targets[idx], depth_weight=depth_weight)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        apply_masks(model, masks)
        history.append(float(loss.detach()))
        if log:
            log(f"finetune step {step + 1}/{steps} loss={history[-1]:.4f}")
    model.eval()
    return history


# ---------------------------------------------------------------- checkpoints


def save_checkpoint(model: nn.Module, path: str | Path, metadata: dict[str, str] | None = None) -> Path:
    """Write the model's parameters (not the rig-derived buffers) as safetensors, atomically."""
    from safetensors.torch import save_file

    tensors = {name: p.detach().contiguous().clone() for name, p in model.named_parameters()}
    with atomic_path(path) as tmp:
        save_file(tensors, str(tmp), metadata=metadata or {})
    return Path(path)


def load_checkpoint(model: nn.Module, path: str | Path) -> nn.Module:
    """Load parameters from a safetensors file into ``model`` (every parameter must be present)."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    path = Path(path)
    if not path.is_file():
        raise SparsefuseError(
            f"checkpoint not found: {path}", "pass a .safetensors file written by sparsefuse train"
        )
    try:
        tensors = load_file(str(path))
    except (SafetensorError, OSError) as exc:
        raise SparsefuseError(
            f"cannot read checkpoint {path}: {exc}", "it must be a safetensors file"
        ) from None
    params = dict(model.named_parameters())
    missing = sorted(set(params) - set(tensors))
    unexpected = sorted(set(tensors) - set(params))
    bad = sorted(n for n in set(params) & set(tensors) if tuple(tensors[n].shape) != tuple(params[n].shape))
    if missing or unexpected or bad:
        raise SparsefuseError(
            f"checkpoint {path} does not fit the model: {len(missing)} missing, "
            f"{len(unexpected)} unexpected, "
            f"{len(bad)} with another shape (e.g. {(missing + unexpected + bad)[0]})",
            "load it into the preset it was trained for (see models/checkpoints/README.md)",
        )
    with torch.no_grad():
        for name, p in params.items():
            p.copy_(tensors[name])
    return model
