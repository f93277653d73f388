"""Training, evaluation, fine-tuning with frozen sparsity masks, and safetensors checkpoints.

Frames are the dicts of models/synthetic (or models/nuscenes): ``images``, ``points``, ``gt_boxes``,
``gt_labels``, ``seg_masks``. Batch size 1, CPU. Run with ``torch.set_num_threads(1)`` on a
shared machine: scatter-heavy sparse ops get much slower with contended OpenMP threads.
"""

from __future__ import annotations

import itertools
import math
import time
from collections.abc import Callable, Iterable
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
from sparsefuse.plugins.bev_pool.reference import bev_pool
from sparsefuse.plugins.scatter_dense.reference import scatter_dense
from sparsefuse.plugins.sparse_conv3d.reference import sparse_conv3d

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


# ---------------------------------------------------------------- autograd for the custom ops


def _bev_pool_setup(ctx, inputs, output) -> None:
    depth, feat, ranks_depth, ranks_feat, ranks_bev = inputs[:5]
    ctx.save_for_backward(depth, feat, ranks_depth, ranks_feat, ranks_bev)


def _bev_pool_backward(ctx, grad_bev):
    depth, feat, ranks_depth, ranks_feat, ranks_bev = ctx.saved_tensors
    channels = feat.shape[-1]
    g = grad_bev.permute(0, 2, 3, 1).reshape(-1, channels)[ranks_bev.long()]  # [P, C]
    values = feat.reshape(-1, channels)[ranks_feat.long()]
    weights = depth.reshape(-1)[ranks_depth.long()]
    grad_depth = depth.new_zeros(depth.numel()).index_add_(0, ranks_depth.long(), (g * values).sum(1))
    grad_feat = feat.new_zeros(feat.reshape(-1, channels).shape).index_add_(
        0, ranks_feat.long(), g * weights[:, None]
    )
    return grad_depth.view_as(depth), grad_feat.view_as(feat), None, None, None, None, None, None


def _scatter_setup(ctx, inputs, output) -> None:
    features, coords, spatial_shape, _ = inputs
    ctx.save_for_backward(coords)
    ctx.channels = features.shape[1]
    ctx.spatial_shape = [int(s) for s in spatial_shape]


def _scatter_backward(ctx, grad_dense):
    (coords,) = ctx.saved_tensors
    z, y, x = ctx.spatial_shape
    g = grad_dense.reshape(grad_dense.shape[0], ctx.channels, z, y, x).permute(0, 2, 3, 4, 1)
    c = coords.long()
    return g[c[:, 0], c[:, 1], c[:, 2], c[:, 3]], None, None, None


def _sconv_setup(ctx, inputs, output) -> None:
    features, coords, weight, bias, spatial_shape, kernel_size, stride, padding, dilation, subm, act = inputs
    ctx.save_for_backward(features, coords, weight, output[0], output[1])
    ctx.has_bias = bias is not None
    ctx.args = (
        list(spatial_shape),
        list(kernel_size),
        list(stride),
        list(padding),
        list(dilation),
        bool(subm),
    )
    ctx.relu = act == "relu"


def kernel_pairs(
    coords: torch.Tensor,
    out_coords: torch.Tensor,
    spatial_shape: list[int],
    kernel_size: list[int],
    stride: list[int],
    padding: list[int],
    dilation: list[int],
    subm: bool,
) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Per kernel offset, (input rows, output rows) with out += W[k] @ in: the same pairs as the
    plugin's kernel map (plugins/sparse_conv3d/reference.py), found through a dense index table of
    the output grid instead of sorted-key searches (about 10x faster on CPU)."""
    c = coords.long()
    oc = out_coords.long()
    out_shape = [
        int(v)
        for v in (
            spatial_shape
            if subm
            else [
                (n + 2 * p - d * (k - 1) - 1) // s + 1
                for n, k, s, p, d in zip(spatial_shape, kernel_size, stride, padding, dilation, strict=True)
            ]
        )
    ]
    bounds = torch.tensor(out_shape)
    batches = int(oc[:, 0].max()) + 1 if oc.numel() else 1
    table = torch.full((batches * math.prod(out_shape),), -1, dtype=torch.long)

    def key(b: torch.Tensor, zyx: torch.Tensor) -> torch.Tensor:
        return ((b * out_shape[0] + zyx[:, 0]) * out_shape[1] + zyx[:, 1]) * out_shape[2] + zyx[:, 2]

    table[key(oc[:, 0], oc[:, 1:])] = torch.arange(oc.shape[0])
    dil, strd, pad = torch.tensor(dilation), torch.tensor(stride), torch.tensor(padding)
    half = torch.tensor([k // 2 for k in kernel_size])
    pairs = []
    for offset in itertools.product(*(range(int(k)) for k in kernel_size)):
        off = torch.tensor(offset)
        if subm:  # out o reads in o + (k - k//2) d, i.e. in x feeds out x - (k - k//2) d
            target = c[:, 1:] - (off - half) * dil
            ok = ((target >= 0) & (target < bounds)).all(dim=1)
        else:
            num = c[:, 1:] + pad - off * dil
            target = torch.div(num, strd, rounding_mode="floor")
            ok = ((num >= 0) & (num % strd == 0) & (target < bounds)).all(dim=1)
        src = torch.nonzero(ok).flatten()
        dst = table[key(c[src, 0], target[src])]
        hit = dst >= 0
        pairs.append((src[hit], dst[hit]))
    return pairs


def _sconv_backward(ctx, grad_out, _grad_coords):
    features, coords, weight, out, out_coords = ctx.saved_tensors
    g = grad_out * (out > 0).to(grad_out.dtype) if ctx.relu else grad_out
    c_out, c_in = weight.shape[0], weight.shape[-1]
    w = weight.reshape(c_out, -1, c_in)
    grad_f = torch.zeros_like(features)
    grad_w = torch.zeros_like(w)
    for k, (src, dst) in enumerate(kernel_pairs(coords, out_coords, *ctx.args)):
        if src.numel():
            gd = g[dst]
            grad_f.index_add_(0, src, gd @ w[:, k, :])
            grad_w[:, k, :] = gd.t() @ features[src]
    grad_b = g.sum(0) if ctx.has_bias else None
    return grad_f, None, grad_w.view_as(weight), grad_b, None, None, None, None, None, None, None


def ensure_autograd() -> None:
    """Give BEVPool, ScatterDense and SparseConv3d a backward where their plugin registers none.

    Voxelize needs none (it only reads the input points). Idempotent; a plugin's own formula wins.
    """
    for op, backward, setup in (
        (bev_pool, _bev_pool_backward, _bev_pool_setup),
        (scatter_dense, _scatter_backward, _scatter_setup),
        (sparse_conv3d, _sconv_backward, _sconv_setup),
    ):
        if getattr(op, "_backward_fn", None) is None:
            op.register_autograd(backward, setup_context=setup)


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
    ensure_autograd()
    grid = model_grid(model)
    rng = np.random.default_rng(config.seed)
    torch.manual_seed(config.seed)
    opt = torch.optim.AdamW(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
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
            targets[idx] = frame_targets(frames[idx], grid)
        images, points = sensor_inputs(frames[idx], mode)
        loss, parts = losses.total_loss(model(images, points), targets[idx])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        nn.utils.clip_grad_norm_(model.parameters(), config.grad_clip)
        opt.step()
        sched.step()
        history.append({"loss": float(loss.detach()), **parts})
        if log and (step + 1) % config.log_every == 0:
            recent = history[-config.log_every :]
            mean = {k: sum(h[k] for h in recent) / len(recent) for k in recent[0]}
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
) -> list[float]:
    """Recover a pruned model (MMPrune4U Algorithm 1, recovery step): Adam on the training loss,
    re-applying the frozen masks (True = keep) after every optimizer step, so pruned weights stay
    exactly zero. Frames are cycled in a seeded shuffled order. Returns the loss of each step.
    The model is left in eval mode.
    """
    if steps < 1 or not frames:
        raise SparsefuseError("finetune needs at least one step and one frame", "pass steps >= 1 and frames")
    _check_masks(model, masks)
    ensure_autograd()
    grid = model_grid(model)
    rng = np.random.default_rng(seed)
    order = np.concatenate([rng.permutation(len(frames)) for _ in range(math.ceil(steps / len(frames)))])
    targets = [frame_targets(f, grid) for f in frames]
    apply_masks(model, masks)
    opt = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=lr)
    model.train()
    history = []
    for step in range(steps):
        idx = int(order[step])
        loss, _ = losses.total_loss(model(*sensor_inputs(frames[idx])), targets[idx])
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
